"""The training loop on the embedded digits (8 px, a width-8 CNN) and safetensors checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import trainer
import trainer.loop as loop
from trainer import ModelConfig, TrainConfig
from trainer.evaluate import predict_logits

METRICS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}


def tiny(**overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8,
        "data.batch_size": 64,
        "model.backbone": "small_cnn",
        "model.width": 8,
        "optim.name": "adam",
        "optim.lr": 3e-3,
        "train.epochs": 3,
        "train.patience": 0,
    }
    return TrainConfig.from_flat({**flat, **overrides})


def val_acc_of(model: torch.nn.Module, cfg: TrainConfig) -> float:
    data = trainer.load_data(cfg.data)
    logits = predict_logits(model, data.x_val, mean=data.mean, std=data.std)
    return (logits.argmax(1) == data.y_val).float().mean().item()


class Recorder:
    """A reporter that remembers what it was told and stops after ``stop_after`` epochs."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.reports: list[tuple[int, dict]] = []

    def report(self, epoch: int, metrics: dict) -> None:
        self.reports.append((epoch, dict(metrics)))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.reports) >= self.stop_after


# --------------------------------------------------------------------------- training


def test_learns_digits_above_chance():
    rec = Recorder()
    cfg = tiny()
    result = trainer.train(cfg, reporter=rec)
    assert result.status == "complete"
    assert len(result.history) == 3
    for i, h in enumerate(result.history, start=1):
        assert METRICS <= set(h)
        assert h["epoch"] == i
        assert h["seconds"] > 0
        assert all(math.isfinite(h[k]) for k in METRICS)
        assert 0.0 <= h["train_acc"] <= 1.0 and 0.0 <= h["val_acc"] <= 1.0
    accs = [h["val_acc"] for h in result.history]
    assert max(accs) > 0.5  # ten classes: chance is 0.1
    assert result.best_epoch == accs.index(max(accs)) + 1
    assert result.best_val_acc == max(accs)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert [e for e, _ in rec.reports] == [1, 2, 3]
    assert [m for _, m in rec.reports] == result.history
    curves = result.curves()
    assert set(curves) == set(result.history[0]) - {"epoch"}
    assert curves["val_acc"] == accs
    assert not result.model.training  # returned in eval mode
    assert val_acc_of(result.model, cfg) == pytest.approx(result.best_val_acc)


def test_reporter_stop_prunes_after_that_epoch(tmp_path):
    rec = Recorder(stop_after=2)
    ckpt = tmp_path / "pruned.safetensors"
    result = trainer.train(tiny(**{"train.epochs": 5}), reporter=rec, checkpoint_path=ckpt)
    assert result.status == "pruned"
    assert "epoch 2" in result.reason
    assert len(result.history) == 2
    assert [e for e, _ in rec.reports] == [1, 2]
    assert result.checkpoint is None and not ckpt.exists()  # pruned weights are not kept


def test_diverging_lr_stops_on_the_first_bad_batch():
    rec = Recorder()
    result = trainer.train(
        tiny(**{"optim.name": "sgd", "optim.lr": 1e30, "sched.name": "none"}), reporter=rec
    )
    assert result.status == "nonfinite_loss"
    assert "epoch 1" in result.reason
    assert result.history == [] and rec.reports == []
    assert math.isnan(result.best_val_acc)


class NanLoss(torch.nn.Module):
    """Cross-entropy until call ``from_call`` (1-based), NaN from then on."""

    def __init__(self, from_call: int = 1) -> None:
        super().__init__()
        self.calls, self.from_call = 0, from_call

    def forward(self, logits, labels):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.calls >= self.from_call else loss


@pytest.mark.parametrize("bad_step", [1, 11])
def test_nan_loss_stops_within_8_steps_naming_the_first_bad_one(monkeypatch, tmp_path, bad_step):
    made: list[NanLoss] = []

    def create_loss(cfg):
        made.append(NanLoss(from_call=bad_step))
        return made[-1]

    monkeypatch.setattr(loop, "create_loss", create_loss)
    rec = Recorder()
    ckpt = tmp_path / "nan.safetensors"
    result = trainer.train(tiny(), reporter=rec, checkpoint_path=ckpt)  # 22 steps per epoch
    assert result.status == "nonfinite_loss"
    assert result.reason == f"loss became nan at epoch 1, step {bad_step}"
    # the README promises a stop within 8 steps of the first bad batch: the host reads the
    # loss every 8 steps and stops at the first read after it (a literal 8, not the constant)
    assert made[0].calls == -(-bad_step // 8) * 8
    assert made[0].calls - bad_step < 8
    assert result.history == [] and rec.reports == []
    assert result.checkpoint is None and not ckpt.exists()


def _sabotage_evaluations_from(epoch: int, monkeypatch) -> list[float]:
    """From ``epoch`` on, zero the head right before each validation: val_acc collapses to
    the share of class 0, a real drop the early stopping must see."""
    real = loop.evaluate
    calls: list[float] = []

    def evaluate(model, *args, **kwargs):
        if len(calls) + 1 >= epoch:
            with torch.no_grad():
                model.head[1].weight.zero_()
                model.head[1].bias.zero_()
        out = real(model, *args, **kwargs)
        calls.append(out[1])
        return out

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return calls


def test_early_stopping_restores_the_best_state(monkeypatch):
    cfg = tiny(**{"train.epochs": 8, "train.patience": 2})
    accs = _sabotage_evaluations_from(3, monkeypatch)
    result = trainer.train(cfg)
    monkeypatch.undo()
    assert result.status == "early_stopped"
    assert len(result.history) == 4  # epochs 3 and 4 without gain, patience 2
    assert [h["val_acc"] for h in result.history] == accs
    assert result.best_epoch in (1, 2)
    assert f"best epoch {result.best_epoch}" in result.reason
    best = result.history[result.best_epoch - 1]["val_acc"]
    assert best > 0.3 > result.history[-1]["val_acc"]
    # the returned model is the best epoch's, not the last one's
    assert result.model.head[1].weight.abs().sum() > 0
    assert val_acc_of(result.model, cfg) == pytest.approx(best)


def test_patience_zero_runs_every_epoch(monkeypatch):
    _sabotage_evaluations_from(2, monkeypatch)
    result = trainer.train(tiny(**{"train.epochs": 4, "train.patience": 0}))
    assert result.status == "complete"
    assert len(result.history) == 4
    assert result.best_epoch == 1


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_equal_seeds_give_equal_initial_weights():
    cfg = tiny()
    data = trainer.load_data(cfg.data)
    cpu = torch.device("cpu")
    a = _state(trainer.build_model(cfg, data, cpu))
    torch.manual_seed(12345)  # global RNG state must not matter
    b = _state(trainer.build_model(cfg, data, cpu))
    c = _state(trainer.build_model(cfg.replace({"train.seed": 1}), data, cpu))
    assert _same_state(a, b)
    assert not _same_state(a, c)


def test_equal_seeds_give_equal_histories():
    """Paired comparisons: the same config and seed train identically (timings aside)."""

    def run(seed: int) -> list[dict]:
        hist = trainer.train(tiny(**{"train.epochs": 2, "train.seed": seed})).history
        return [{k: v for k, v in h.items() if k != "seconds"} for h in hist]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def trained(tmp_path):
    cfg = tiny(**{"train.epochs": 1})
    path = tmp_path / "ckpt" / "best.safetensors"
    result = trainer.train(cfg, checkpoint_path=path)
    return cfg, result, path


def test_checkpoint_round_trip(trained):
    cfg, result, path = trained
    assert result.checkpoint == str(path) and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    state, meta = trainer.read_checkpoint(path)
    assert _same_state(state, {k: v.cpu() for k, v in result.model.state_dict().items()})
    assert meta["config"] == cfg.to_flat()
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["in_chans"] == 1
    assert meta["summary"]["status"] == "complete"
    assert meta["summary"]["best_val_acc"] == result.best_val_acc

    data = trainer.load_data(cfg.data)
    fresh = trainer.build_model(cfg.replace({"train.seed": 7}), data, torch.device("cpu"))
    assert not _same_state(_state(fresh), state)
    assert trainer.load_pretrained(fresh, path) == meta
    assert _same_state(_state(fresh), state)


def test_pretrained_config_loads_the_weights(trained):
    cfg, result, path = trained
    data = trainer.load_data(cfg.data)
    cfg2 = cfg.replace({"model.pretrained": str(path), "train.seed": 3})
    model = trainer.build_model(cfg2, data, torch.device("cpu"))
    saved, _ = trainer.read_checkpoint(path)
    assert _same_state(_state(model), saved)


def test_head_is_replaced_when_the_class_count_differs(trained):
    cfg, result, path = trained
    saved, _ = trainer.read_checkpoint(path)
    torch.manual_seed(5)
    model = trainer.create_model(cfg.model, num_classes=4, in_chans=1, image_size=8)
    head_before = _state(model.head)
    trainer.load_pretrained(model, path)
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, saved[key]), key
    assert model.head[1].weight.shape == (4, model.num_features)
    assert _same_state(_state(model.head), head_before)  # fresh head, not the 10-class one
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_checkpoint_of_another_backbone_is_refused(trained):
    cfg, result, path = trained
    other = trainer.create_model(ModelConfig(width=16), num_classes=10, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        trainer.load_pretrained(other, path)


@pytest.mark.parametrize("bare", [False, True])
def test_plain_state_dict_files_load(tmp_path, bare):
    torch.manual_seed(0)
    src = trainer.create_model(ModelConfig(width=8), num_classes=3, in_chans=1, image_size=8)
    state = src.backbone.state_dict() if bare else {"state_dict": src.state_dict()}
    torch.save(state, tmp_path / "plain.pth")
    torch.manual_seed(1)
    dst = trainer.create_model(ModelConfig(width=8), num_classes=3, in_chans=1, image_size=8)
    trainer.load_pretrained(dst, tmp_path / "plain.pth")
    assert _same_state(_state(dst.backbone), _state(src.backbone))


def test_missing_or_broken_checkpoint_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        trainer.read_checkpoint(tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        trainer.read_checkpoint(broken)


class _Payload:
    """Unpickling this creates the marker file: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("wrap", [False, True])
def test_malicious_pickle_is_refused_without_running(tmp_path, suffix, wrap):
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": payload}} if wrap else payload, path)
    assert not marker.exists()

    model = trainer.create_model(ModelConfig(width=8), num_classes=3, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        trainer.read_checkpoint(path)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        trainer.load_pretrained(model, path)
    assert not marker.exists()

    # the control: an unsafe load of the same file does run the payload
    obj = torch.load(path, weights_only=False)
    (obj["state_dict"]["w"] if wrap else obj).close()
    assert marker.exists()
