"""Registries of the trainer: every loss, optimizer and backbone, and the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainer
from trainer import LossConfig, ModelConfig, OptimConfig, TrainConfig
from trainer.models import SEED_TIMM_BACKBONES
from trainer.optim import SAM

NUM_CLASSES = 5


def _batch(seed: int = 0, n: int = 8, c: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2.0
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, labels


def _smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    return -(dist * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# --------------------------------------------------------------------------- losses


def test_loss_registry_holds_the_seeds_losses():
    assert set(trainer.list_losses()) >= {"ce", "label_smoothing", "focal", "ls_focal"}


@pytest.mark.parametrize("name", trainer.list_losses())
def test_loss_is_finite_scalar_with_gradient(name):
    logits, labels = _batch()
    logits.requires_grad_(True)
    loss = trainer.create_loss(name)(logits, labels)
    assert loss.shape == ()
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", trainer.list_losses())
def test_loss_prefers_correct_predictions(name):
    _, labels = _batch()
    right = F.one_hot(labels, NUM_CLASSES).float() * 6.0
    wrong = F.one_hot((labels + 1) % NUM_CLASSES, NUM_CLASSES).float() * 6.0
    loss = trainer.create_loss(name)
    assert loss(right, labels) < loss(wrong, labels)


def test_ce_equals_torch_cross_entropy():
    logits, labels = _batch(1)
    got = trainer.create_loss("ce")(logits, labels)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


def test_label_smoothing_matches_its_definition():
    logits, labels = _batch(2)
    eps = 0.1
    got = trainer.create_loss(LossConfig(name="label_smoothing", smoothing=eps))(logits, labels)
    dist = F.one_hot(labels, NUM_CLASSES).float() * (1 - eps) + eps / NUM_CLASSES
    torch.testing.assert_close(got, _smoothed_ce(logits, labels, dist))


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, labels = _batch(3)
    got = trainer.create_loss(LossConfig(name="focal", gamma=0.0))(logits, labels)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


def test_focal_matches_its_definition():
    logits, labels = _batch(4)
    gamma, alpha = 2.0, 0.25
    got = trainer.create_loss(LossConfig(name="focal", gamma=gamma, alpha=alpha))(logits, labels)
    log_pt = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    want = -(alpha * (1 - log_pt.exp()) ** gamma * log_pt).mean()
    torch.testing.assert_close(got, want)
    assert got < F.cross_entropy(logits, labels)  # easy examples are down-weighted


def test_ls_focal_with_gamma_zero_is_seed_000_smoothed_ce():
    """Seed 000 puts 1 - eps on the target and eps / (C - 1) on every other class."""
    logits, labels = _batch(5)
    eps = 0.2
    cfg = LossConfig(name="ls_focal", gamma=0.0, smoothing=eps)
    got = trainer.create_loss(cfg)(logits, labels)
    dist = torch.full((len(labels), NUM_CLASSES), eps / (NUM_CLASSES - 1))
    dist.scatter_(1, labels[:, None], 1 - eps)
    torch.testing.assert_close(got, _smoothed_ce(logits, labels, dist))
    # not torch's label smoothing, which spreads eps / C over all classes
    torch_ls = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert not torch.allclose(got, torch_ls)


def test_loss_options_reach_the_module():
    logits, labels = _batch(6)
    a = trainer.create_loss("focal", gamma=1.0)(logits, labels)
    b = trainer.create_loss("focal", gamma=3.0)(logits, labels)
    assert a > b


def test_unknown_loss_lists_options_and_closest():
    with pytest.raises(ValueError) as info:
        trainer.create_loss("fcal")
    msg = str(info.value)
    assert "'fcal'" in msg and "Did you mean 'focal'" in msg
    for name in trainer.list_losses():
        assert name in msg


# --------------------------------------------------------------------------- optimizers


def test_optimizer_registry_holds_the_seeds_optimizers():
    assert set(trainer.list_optimizers()) >= {"sgd", "adam", "adamw", "sam_sgd", "sam_adam"}


def _quadratic_problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
    return model, lambda: F.mse_loss(model(x), y)


@pytest.mark.parametrize("name", trainer.list_optimizers())
def test_optimizer_reduces_a_simple_loss(name):
    model, loss_fn = _quadratic_problem()
    opt = trainer.create_optimizer(model.parameters(), OptimConfig(name=name, lr=0.05))
    start = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        if getattr(opt, "is_sam", False):  # SAM's two passes, as the training loop does
            opt.first_step()
            opt.zero_grad()
            loss_fn().backward()
            opt.second_step()
        else:
            opt.step()
    end = loss_fn().item()
    assert math.isfinite(end)
    assert end < 0.2 * start, (start, end)


def test_sam_step_follows_the_gradient_at_the_perturbed_point():
    """One sam_sgd update: w' = w - lr * grad(w + rho * g / |g|), with g = grad(w)."""
    w0 = torch.tensor([1.0, -2.0, 0.5])
    target = torch.tensor([0.3, 0.1, -1.0])
    w = nn.Parameter(w0.clone())
    lr, rho = 0.1, 0.05
    opt = trainer.create_optimizer([w], OptimConfig(name="sam_sgd", lr=lr, rho=rho, momentum=0.0))
    assert isinstance(opt, SAM)

    def loss_fn():
        return ((w - target) ** 4).sum()  # not quadratic: the perturbation matters

    loss_fn().backward()
    g = 4 * (w0 - target) ** 3
    opt.first_step()
    torch.testing.assert_close(w.detach(), w0 + rho * g / g.norm())
    opt.zero_grad()
    loss_fn().backward()
    opt.second_step()
    w_adv = w0 + rho * g / g.norm()
    want = w0 - lr * 4 * (w_adv - target) ** 3
    torch.testing.assert_close(w.detach(), want)
    plain = w0 - lr * g
    assert not torch.allclose(want, plain)


def test_sam_refuses_a_single_step_and_shares_the_lr_with_its_base():
    w = nn.Parameter(torch.zeros(2))
    opt = trainer.create_optimizer([w], "sam_adam", lr=0.01)
    with pytest.raises(RuntimeError, match="two passes"):
        opt.step()
    opt.param_groups[0]["lr"] = 0.5  # what a scheduler does
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


def test_unknown_optimizer_lists_options_and_closest():
    with pytest.raises(ValueError) as info:
        trainer.create_optimizer([nn.Parameter(torch.zeros(1))], "adm")
    msg = str(info.value)
    assert "'adm'" in msg and "Did you mean 'adam'" in msg
    for name in trainer.list_optimizers():
        assert name in msg


# --------------------------------------------------------------------------- backbones


def test_model_registry_lists_builtins_and_seed_timm_models():
    assert set(trainer.list_models()) == {
        "small_cnn",
        "seed_cnn",
        "seed_cnn_full",
        "mlp",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "efficientnet_b2",
        "vgg16_bn",
    }
    assert set(SEED_TIMM_BACKBONES) < set(trainer.list_models())


def _check_head(model: nn.Module, dropout: float, num_classes: int) -> None:
    assert isinstance(model.head, nn.Sequential) and len(model.head) == 2
    drop, linear = model.head
    assert isinstance(drop, nn.Dropout) and drop.p == dropout
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (model.num_features, num_classes)


@pytest.mark.parametrize("name", trainer.list_models())
def test_backbone_builds_with_head_and_predicts(name):
    """32 px, batch 2, forward only: cheap even for ResNet-152 and VGG-16."""
    torch.manual_seed(0)
    model = trainer.create_model(
        ModelConfig(backbone=name, dropout=0.25), num_classes=7, in_chans=3, image_size=32
    )
    _check_head(model, 0.25, 7)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feats = model.backbone(x)
        out = model(x)
    assert feats.shape == (2, model.num_features)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["small_cnn", "seed_cnn", "mlp"])
def test_builtin_backbone_trains_on_grayscale_digits_size(name):
    torch.manual_seed(0)
    model = trainer.create_model(
        ModelConfig(backbone=name, dropout=0.5, width=8), num_classes=10, in_chans=1, image_size=8
    )
    _check_head(model, 0.5, 10)
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_small_cnn_width_sets_the_feature_size():
    a = trainer.create_model(ModelConfig(width=8), num_classes=3, in_chans=1, image_size=8)
    b = trainer.create_model(ModelConfig(width=16), num_classes=3, in_chans=1, image_size=8)
    assert (a.num_features, b.num_features) == (32, 64)  # 4 * width


@pytest.mark.parametrize(
    ("bad", "closest"),
    [("resnt18", "resnet18"), ("small_cn", "small_cnn"), ("vgg16bn", "vgg16_bn")],
)
def test_unknown_backbone_names_the_closest(bad, closest):
    with pytest.raises(ValueError) as info:
        trainer.create_model(ModelConfig(backbone=bad), num_classes=3)
    msg = str(info.value)
    assert f"unknown backbone {bad!r}" in msg
    assert f"Did you mean {closest!r}" in msg
    assert "Options:" in msg
    with pytest.raises(ValueError, match=f"Did you mean {closest!r}"):
        trainer.check_backbone(bad)


def test_any_timm_name_is_a_valid_backbone():
    assert trainer.check_backbone("mobilenetv3_small_050") == "mobilenetv3_small_050"


def test_model_needs_two_classes():
    with pytest.raises(ValueError, match="num_classes must be >= 2, but got 1"):
        trainer.create_model(ModelConfig(), num_classes=1)


# --------------------------------------------------------------------------- config


def test_flat_round_trip():
    flat = {
        "data.image_size": 12,
        "data.batch_size": 16,
        "data.classes": [3, 1, 4],
        "model.backbone": "seed_cnn",
        "model.dropout": 0.3,
        "loss.name": "ls_focal",
        "loss.gamma": 1,  # an int widens to float
        "optim.name": "sgd",
        "optim.lr": 0.02,
        "optim.nesterov": True,
        "sched.name": "none",
        "train.epochs": 4,
    }
    cfg = TrainConfig.from_flat(flat)
    assert cfg.data.classes == (3, 1, 4)
    assert cfg.loss.gamma == 1.0 and isinstance(cfg.loss.gamma, float)
    out = cfg.to_flat()
    assert sorted(out) == trainer.config_keys()
    for key, value in flat.items():
        assert out[key] == value
    assert TrainConfig.from_flat(out) == cfg
    assert TrainConfig.from_flat({}) == TrainConfig()
    assert cfg.replace({"optim.lr": 0.5}).optim.lr == 0.5
    assert cfg.optim.lr == 0.02  # frozen: replace returns a copy


def test_config_keys_are_dotted_and_complete():
    keys = trainer.config_keys()
    assert {"optim.lr", "data.batch_size", "model.dropout", "loss.name", "model.backbone"} <= set(
        keys
    )
    assert all(key.count(".") == 1 for key in keys)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("optim.lr", 0.0, "0.0"),
        ("optim.lr", -0.001, "-0.001"),
        ("optim.lr", float("nan"), "nan"),
        ("data.batch_size", 0, "0"),
        ("data.batch_size", -4, "-4"),
        ("model.dropout", 1.0, "1.0"),
        ("model.dropout", 1.5, "1.5"),
        ("model.dropout", -0.1, "-0.1"),
        ("data.image_size", 2, "2"),
        ("train.epochs", 0, "0"),
        ("loss.smoothing", 1.0, "1.0"),
        ("optim.momentum", 1.0, "1.0"),
    ],
)
def test_bad_value_names_key_and_value(key, value, shown):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_flat({key: value})
    msg = str(info.value)
    assert key in msg
    assert msg.endswith(f"but got {shown}")


def test_good_edge_values_are_accepted():
    cfg = TrainConfig.from_flat({"optim.lr": 1e-8, "data.batch_size": 1, "model.dropout": 0.0})
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.model.dropout) == (1e-8, 1, 0.0)
    assert TrainConfig.from_flat({"model.dropout": 0.99}).model.dropout == 0.99


@pytest.mark.parametrize(
    ("bad", "closest"),
    [
        ("optim.l", "optim.lr"),
        ("model.droput", "model.dropout"),
        ("data.batchsize", "data.batch_size"),
    ],
)
def test_unknown_key_suggests_the_closest(bad, closest):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_flat({bad: 1})
    msg = str(info.value)
    assert f"unknown config key {bad!r}" in msg
    assert f"Did you mean {closest!r}" in msg
    with pytest.raises(ValueError, match=f"Did you mean {closest!r}"):
        trainer.check_key(bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [("optim.lr", "fast"), ("data.batch_size", 3.5), ("optim.nesterov", 1), ("model.backbone", 3)],
)
def test_wrong_type_is_refused(key, value):
    with pytest.raises(TypeError) as info:
        TrainConfig.from_flat({key: value})
    assert key in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("model.strategy", "parital"), ("sched.name", "cosin"), ("data.augment", "lite")],
)
def test_unknown_choice_lists_options(key, value):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_flat({key: value})
    msg = str(info.value)
    assert key in msg and repr(value) in msg and "Did you mean" in msg
