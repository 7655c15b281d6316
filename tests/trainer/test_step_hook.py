"""The reporter's optional per-step hook: progress inside an epoch, and a deadline stop."""

from __future__ import annotations

import trainer
from trainer import TrainConfig


def tiny(**overrides) -> TrainConfig:
    flat = {
        "data.image_size": 8,
        "data.batch_size": 128,
        "model.backbone": "small_cnn",
        "model.width": 8,
        "optim.name": "adam",
        "optim.lr": 3e-3,
        "train.epochs": 3,
        "train.patience": 0,
    }
    return TrainConfig.from_flat({**flat, **overrides})


class StepRecorder:
    """Records every step call; returns True (stop) from ``stop_at`` = (epoch, step) on."""

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.stop_at = stop_at
        self.steps: list[tuple[int, int, int, int]] = []
        self.epochs: list[int] = []

    def report(self, epoch: int, metrics: dict) -> None:
        self.epochs.append(epoch)

    def should_stop(self) -> bool:
        return False

    def step(self, epoch: int, step: int, steps_per_epoch: int, images: int) -> bool:
        self.steps.append((epoch, step, steps_per_epoch, images))
        return self.stop_at is not None and (epoch, step) >= self.stop_at


def test_step_hook_is_called_after_every_step_with_plain_ints():
    cfg = tiny()
    rec = StepRecorder()
    result = trainer.train(cfg, reporter=rec)
    n_train = len(trainer.load_data(cfg.data).x_train)
    per_epoch = n_train // 128
    assert result.status == "complete" and rec.epochs == [1, 2, 3]
    assert len(rec.steps) == 3 * per_epoch
    assert all(type(v) is int for call in rec.steps for v in call)  # never a device tensor
    first = [c for c in rec.steps if c[0] == 1]
    assert [c[1] for c in first] == list(range(1, per_epoch + 1))
    assert [c[3] for c in first] == [128 * s for s in range(1, per_epoch + 1)]
    assert {c[2] for c in rec.steps} == {per_epoch}


def test_step_hook_returning_true_stops_the_run_and_keeps_finished_epochs(tmp_path):
    rec = StepRecorder(stop_at=(2, 3))
    ckpt = tmp_path / "best.safetensors"
    result = trainer.train(tiny(), reporter=rec, checkpoint_path=ckpt)
    assert result.status == "budget"
    assert "wall-clock budget ran out in epoch 2 (step 3 of" in result.reason
    assert "1 finished epoch kept" in result.reason
    assert [h["epoch"] for h in result.history] == [1] and rec.epochs == [1]
    assert result.best_epoch == 1 and result.model is not None
    assert rec.steps[-1][:2] == (2, 3)  # stopped at that step, not at the end of the epoch
    assert result.checkpoint is None and not ckpt.exists()  # a stopped trial keeps no weights


def test_reporters_without_a_step_method_still_work():
    class EpochOnly:
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def report(self, epoch: int, metrics: dict) -> None:
            self.epochs.append(epoch)

        def should_stop(self) -> bool:
            return False

    rep = EpochOnly()
    result = trainer.train(tiny(**{"train.epochs": 2}), reporter=rep)
    assert result.status == "complete" and rep.epochs == [1, 2]
    assert trainer.train(tiny(**{"train.epochs": 1})).status == "complete"  # NullReporter
