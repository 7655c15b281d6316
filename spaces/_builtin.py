"""The built-in spaces. Ranges follow what the seed reports searched by hand."""

from __future__ import annotations

from spaces._space import ParamDraw, register_space


def _loss(s: ParamDraw, names: list[str]) -> None:
    loss = s.choice("loss.name", names)
    if loss in ("label_smoothing", "ls_focal"):
        s.float("loss.smoothing", 0.01, 0.2)  # seed 000 used 0.05, seed 003 0.1
    if loss in ("focal", "ls_focal"):
        s.float("loss.gamma", 0.5, 4.0)  # seed 000 used 2.0


def _optimizer(s: ParamDraw, names: list[str], *, lr: tuple[float, float]) -> None:
    opt = s.choice("optim.name", names)
    s.float("optim.lr", *lr, log=True)
    s.float("optim.weight_decay", 1e-6, 1e-2, log=True)
    if opt in ("sgd", "sam_sgd"):
        s.float("optim.momentum", 0.8, 0.99)  # seed 002: 0.9
        s.choice("optim.nesterov", [False, True])
    if opt.startswith("sam_"):
        s.float("optim.rho", 0.01, 0.2, log=True)  # seed 000: 0.05


@register_space("default")
def default_space(s: ParamDraw) -> None:
    """All six dimensions of the seeds: batch size, lr, dropout, loss, optimizer, backbone."""
    s.choice("data.batch_size", [8, 16, 32, 64, 128, 256])  # seed 004: 8 / 64 / 256
    _optimizer(s, ["sgd", "adam", "adamw", "sam_sgd", "sam_adam"], lr=(1e-5, 1e-1))
    s.float("model.dropout", 0.0, 0.7)
    _loss(s, ["ce", "label_smoothing", "focal", "ls_focal"])
    s.choice("sched.name", ["cosine", "plateau", "none"])
    s.choice(
        "model.backbone",
        ["small_cnn", "seed_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b2"],
    )


@register_space("digits")
def digits_space(s: ParamDraw) -> None:
    """The embedded demo: the same six dimensions, kept to what trains in seconds on a CPU."""
    s.choice("data.batch_size", [16, 32, 64, 128])
    _optimizer(s, ["sgd", "adam", "adamw", "sam_adam"], lr=(1e-4, 1e-1))
    s.float("model.dropout", 0.0, 0.6)
    _loss(s, ["ce", "label_smoothing", "focal", "ls_focal"])
    s.choice("sched.name", ["cosine", "none"])
    if s.choice("model.backbone", ["small_cnn", "seed_cnn", "mlp"]) == "small_cnn":
        s.choice("model.width", [8, 16, 32])


@register_space("transfer")
def transfer_space(s: ParamDraw) -> None:
    """Fine-tuning from pretrained weights (seeds 001, 004): strategy, lr, batch size,
    optimizer, loss, dropout and backbone; the pretrained source is a study setting."""
    if s.choice("model.strategy", ["full", "partial", "linear_probe"]) == "partial":
        s.int("model.freeze_stages", 1, 2)  # every backbone has >= 3 stages
    s.choice("data.batch_size", [16, 32, 64, 128])
    _optimizer(s, ["sgd", "adam", "adamw"], lr=(1e-5, 1e-2))
    _loss(s, ["ce", "label_smoothing", "focal"])
    s.float("model.dropout", 0.0, 0.6)
    s.choice("model.backbone", ["resnet18", "resnet50", "resnet101"])


@register_space("resnets")
def resnets_space(s: ParamDraw) -> None:
    """Seed 001's from-scratch comparison: ResNet-18/50/101 with the usual training knobs."""
    s.choice("data.batch_size", [16, 32, 64, 128])
    _optimizer(s, ["sgd", "adam", "adamw", "sam_sgd"], lr=(1e-4, 1e-1))
    s.float("model.dropout", 0.0, 0.6)
    _loss(s, ["ce", "label_smoothing", "focal", "ls_focal"])
    s.choice("sched.name", ["cosine", "plateau"])
    s.choice("model.backbone", ["resnet18", "resnet50", "resnet101"])
