"""The optimisation step is exact under any split of its batch: one step with batch B equals B/2
micro-batches accumulated, for every optimizer, with and without clipping; SAM's perturbed
gradient covers every micro-batch; an out-of-memory retry ends with the same weights.

Exactness needs a deterministic model: float64, no dropout, and no BatchNorm (its batch
statistics make a micro-batch's forward pass differ from the full batch's, so no split can be
exact with it). The step-level tests use a small tanh MLP; the end-to-end ones seed 004's CNN
(``seed_cnn``: convolutions, ReLU, linear layers, no batch statistics).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from faultkit import injected
from torch import nn

import trainer
from trainer import OptimConfig, TrainConfig
from trainer.steps import Batch, make_step

OPTIMIZERS = ["sgd", "adam", "adamw", "sam_sgd", "sam_adam"]
CLIP = 0.05  # well below the gradient norms here, so clipping changes every step


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(steps: int = 3, size: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(size, 3, 2, 2, generator=g)
        y = torch.randint(0, 3, (size,), generator=g)
        out.append(Batch(x, y, y))
    return out


def optimizer_for(model: nn.Module, name: str) -> torch.optim.Optimizer:
    cfg = OptimConfig(name=name, lr=0.05, weight_decay=1e-3, momentum=0.9, rho=0.1)
    return trainer.create_optimizer(model.parameters(), cfg)


def train_steps(name: str, *, micro: int, clip: float) -> dict[str, torch.Tensor]:
    model = mlp()
    opt = optimizer_for(model, name)
    step = make_step(model, opt, nn.CrossEntropyLoss(), grad_clip=clip)
    for b in batches():
        step(b.split(micro))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("clip", [0.0, CLIP])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_batch_equals_accumulated_half_batches(float64, name, clip):
    whole = train_steps(name, micro=8, clip=clip)
    assert_same(train_steps(name, micro=4, clip=clip), whole)
    assert_same(train_steps(name, micro=3, clip=clip), whole)  # uneven split: 3 + 3 + 2


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_clipping_changes_the_update(float64, name):
    a, b = train_steps(name, micro=8, clip=0.0), train_steps(name, micro=8, clip=CLIP)
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def reference_sam_step(model: nn.Module, opt, batch: Batch, *, clip: float) -> None:
    """SAM by the book on the whole batch: climb rho along the normalised gradient, take the
    gradient there, clip it, step from the original weights with the base optimizer."""
    params = [p for p in model.parameters()]
    loss_fn = nn.CrossEntropyLoss()
    grads = torch.autograd.grad(loss_fn(model(batch.x), batch.y), params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    eps = [g * (opt.rho / (norm + 1e-12)) for g in grads]
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            p.add_(e)
    grads = torch.autograd.grad(loss_fn(model(batch.x), batch.y), params)
    with torch.no_grad():
        for p, e, g in zip(params, eps, grads, strict=True):
            p.sub_(e)
            p.grad = g.clone()
    if clip:
        nn.utils.clip_grad_norm_(params, clip)
    opt.base_optimizer.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("clip", [0.0, CLIP])
@pytest.mark.parametrize("name", ["sam_sgd", "sam_adam"])
def test_sam_with_accumulation_matches_sam_on_the_whole_batch(float64, name, clip):
    ref = mlp()
    opt = optimizer_for(ref, name)
    for b in batches():
        reference_sam_step(ref, opt, b, clip=clip)
    assert_same(train_steps(name, micro=2, clip=clip), ref.state_dict())


def test_sam_second_pass_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    plain = copy.deepcopy(model)
    (b,) = batches(steps=1)
    make_step(model, optimizer_for(model, "sam_sgd"), nn.CrossEntropyLoss())(b.split(4))
    plain.train()
    for micro in b.split(4):  # the statistics of one forward pass over the batch
        plain(micro.x)
    torch.testing.assert_close(model[2].running_mean, plain[2].running_mean)
    torch.testing.assert_close(model[2].running_var, plain[2].running_var)


# --------------------------------------------------------------------------- end to end


def cfg_for(name: str, **overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8,
        "data.batch_size": 32,
        "data.augment": "light",  # drawn per step batch: the same however the step is split
        "model.backbone": "seed_cnn",  # no BatchNorm, no dropout
        "optim.name": name,
        "optim.lr": 0.01,
        "optim.momentum": 0.9,
        "train.grad_clip": 1.0,
        "train.epochs": 2,
        "train.patience": 0,
        "train.channels_last": False,
    }
    return TrainConfig.from_flat({**flat, **overrides})


def weights(result: trainer.TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("name", ["sgd", "adam", "sam_adam"])
def test_a_trial_that_runs_out_of_memory_ends_with_the_same_weights(float64, name):
    cfg = cfg_for(name)
    clean = trainer.train(cfg)
    with injected("oom_above=16"):  # batch 32 "does not fit": 2 micro-batches of 16
        retried = trainer.train(cfg)
    assert retried.adjustments["oom_retries"] == 1
    assert (retried.adjustments["micro_batch"], retried.adjustments["accum_steps"]) == (16, 2)
    assert retried.history and len(retried.history) == len(clean.history)
    assert_same(weights(retried), weights(clean))


def _evaluation_out_of_memory_above(limit: int, monkeypatch) -> list[int]:
    """Make the loop's evaluation raise the out-of-memory error a GPU would for a batch over
    ``limit`` images; returns the evaluation batch sizes asked, in order."""
    import trainer.loop as loop
    from trainer import _faults

    real, asked = loop.evaluate, []

    def evaluate(*args, batch, **kwargs):
        asked.append(batch)
        if batch > limit:
            raise _faults.out_of_memory_error()(f"CUDA out of memory (evaluation batch {batch})")
        return real(*args, batch=batch, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return asked


def test_out_of_memory_during_evaluation_is_retried_with_the_same_weights(float64, monkeypatch):
    cfg = cfg_for("adam")
    clean = trainer.train(cfg)
    asked = _evaluation_out_of_memory_above(256, monkeypatch)
    retried = trainer.train(cfg)
    # the first evaluation (512 images at a time) ran out of memory; the run started again
    # with half the evaluation batch (and half the micro-batch, the same update)
    assert asked[0] == 512 and set(asked[1:]) == {256} and len(asked) == 1 + cfg.train.epochs
    assert retried.status == clean.status == "complete"
    assert retried.adjustments["oom_retries"] == 1
    assert [h["val_acc"] for h in retried.history] == [h["val_acc"] for h in clean.history]
    assert_same(weights(retried), weights(clean))


def test_evaluation_that_never_fits_ends_with_status_oom(monkeypatch):
    _evaluation_out_of_memory_above(0, monkeypatch)
    result = trainer.train(cfg_for("adam"))
    assert result.status == "oom" and result.history == []
    assert result.reason.startswith("oom: out of memory at micro-batch 2")
    assert "evaluation batch" in result.reason


def test_accum_steps_two_equals_the_doubled_batch(float64):
    doubled = trainer.train(cfg_for("sam_sgd", **{"data.batch_size": 32}))
    accumulated = trainer.train(
        cfg_for("sam_sgd", **{"data.batch_size": 16, "train.accum_steps": 2})
    )
    assert_same(weights(accumulated), weights(doubled))


# --------------------------------------------------------------------------- host reads


def test_a_training_epoch_reads_the_device_only_every_few_steps(monkeypatch):
    """Every way Python reads a tensor's value (item, tolist, bool, int, float) is counted
    during training epochs (evaluation excluded): only the non-finite checks every
    CHECK_EVERY steps and the epoch-end loss and accuracy may read, whatever the recipe.
    Reads from inside torch are not ours to count: its optimizers read their step counters,
    which live on the host (CPU tensors) by design, so those are no device sync."""
    import sys

    import trainer.loop as loop

    torch_dir = str(Path(torch.__file__).parent)
    reads: list[str] = []
    counting = [False]
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if counting[0] and not caller.startswith(torch_dir):
                reads.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_epoch = loop._Run.train_epoch

    def train_epoch(self, *args, **kwargs):
        counting[0] = True
        try:
            return real_epoch(self, *args, **kwargs)
        finally:
            counting[0] = False

    monkeypatch.setattr(loop._Run, "train_epoch", train_epoch)
    cfg = TrainConfig.from_flat({
        "data.image_size": 8, "data.batch_size": 32, "model.width": 8, "train.epochs": 2,
        "train.patience": 0, "data.augment": "strong", "data.cutmix": 0.5, "data.mixup": 0.5,
        "optim.name": "sam_adam", "train.grad_clip": 1.0, "train.accum_steps": 2,
        "train.ema_decay": 0.9, "sched.name": "onecycle", "sched.warmup_epochs": 1,
    })  # fmt: skip
    result = trainer.train(cfg)
    assert result.status == "complete"
    steps = len(trainer.load_data(cfg.data).x_train) // 64  # 22 steps of 2 x 32 images
    checks = -(-steps // trainer.loop.CHECK_EVERY)  # the last one at the epoch end
    assert len(reads) == 2 * (checks + 2), reads  # per epoch: checks + loss + accuracy


def test_micro_batches_of_a_mixed_batch_keep_its_labels_and_mixing_weight():
    x, y, y_mix = torch.randn(5, 3, 2, 2), torch.arange(5), torch.arange(5, 10)
    parts = Batch(x, y, y_mix, lam=0.3).split(2)
    assert [len(p.y) for p in parts] == [2, 2, 1]
    assert all(p.lam == 0.3 for p in parts)  # the loss mixes every micro-batch alike
    assert torch.equal(torch.cat([p.y_mix for p in parts]), y_mix)
    assert torch.equal(torch.cat([p.x for p in parts]), x)


def test_a_bfloat16_autocast_step_on_the_cpu_trains_with_float_logits():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    step = make_step(
        model, optimizer_for(model, "sgd"), nn.CrossEntropyLoss(), amp=True,
        amp_dtype=torch.bfloat16,
    )  # fmt: skip
    batch = batches(steps=1)[0]
    loss, correct = step([batch])
    plain = nn.CrossEntropyLoss(reduction="sum")(mlp()(batch.x), batch.y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - plain.item()) < 0.05 * plain.item()  # bfloat16's precision
    assert 0 <= int(correct) <= len(batch.y)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("clip", [0.0, CLIP])
def test_with_a_loss_scaler_every_optimizer_updates_exactly_as_without_one(float64, name, clip):
    # fp16's path (GradScaler) on the CPU: a power-of-two scale is undone exactly in float64,
    # so the weights must match the unscaled step's bit for bit, SAM's two passes included
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu")):
        model = mlp()
        step = make_step(
            model, optimizer_for(model, name), nn.CrossEntropyLoss(), grad_clip=clip,
            scaler=scaler,
        )  # fmt: skip
        for b in batches():
            step(b.split(3))
        weights.append(model.state_dict())
    plain, scaled = weights
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)
    assert not torch.equal(plain["1.weight"], mlp().state_dict()["1.weight"])  # it trained


@pytest.mark.parametrize("scaled", [False, True])
def test_a_step_reports_its_batchs_summed_loss_and_correct_count_before_the_update(float64, scaled):
    model = mlp()
    batch = batches(steps=1)[0]
    with torch.no_grad():
        logits = model(batch.x)
    expected_loss = nn.CrossEntropyLoss(reduction="sum")(logits, batch.y)
    expected_correct = int((logits.argmax(1) == batch.y).sum())
    scaler = torch.amp.GradScaler("cpu") if scaled else None
    step = make_step(model, optimizer_for(model, "sam_sgd"), nn.CrossEntropyLoss(), scaler=scaler)
    loss, correct = step(batch.split(3))  # 3 + 3 + 2 images, SAM's second pass as well
    assert torch.allclose(loss, expected_loss) and int(correct) == expected_correct
    assert expected_correct == 3  # of 8: a count that a wrong comparison would change


def test_a_mixed_batch_is_trained_on_lam_of_one_labels_loss_and_the_rest_of_the_others(float64):
    model = mlp()
    batch = batches(steps=1)[0]
    y_mix = (batch.y + 1) % 3
    lam = torch.tensor(0.3)
    ce = nn.CrossEntropyLoss()
    with torch.no_grad():
        logits = model(batch.x)
    mean = 0.3 * ce(logits, batch.y) + 0.7 * ce(logits, y_mix)
    reference = mlp()
    reference_opt = optimizer_for(reference, "sgd")
    (0.3 * ce(reference(batch.x), batch.y) + 0.7 * ce(reference(batch.x), y_mix)).backward()
    reference_opt.step()
    step = make_step(model, optimizer_for(model, "sgd"), ce, mixing=True)
    loss, _ = step([Batch(batch.x, batch.y, y_mix, lam)])
    assert torch.allclose(loss, mean * len(batch.y))
    assert all(torch.allclose(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
