"""A stand-in for ``trainer.train`` in search tests whose point is not training.

It follows the trainer's side of the protocol: a ``step`` call per epoch (the caller's
deadline), ``report`` after every epoch and a stop when ``should_stop()`` says so, a
checkpoint file for a complete run, and a ``TrainResult``. Its validation curve depends only
on the configuration (or on the ``curve`` given), so a sampler that sees the same results
draws the same next configuration, as it would after the same real training.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trainer


def config_curve(cfg: trainer.TrainConfig) -> list[float]:
    """A rising validation curve whose end, in [0.2, 0.95], is fixed by the configuration."""
    digest = zlib.crc32(json.dumps(cfg.to_flat(), sort_keys=True, default=str).encode())
    end = 0.2 + 0.75 * (digest % 10_000) / 10_000
    epochs = cfg.train.epochs
    return [end * (epoch / epochs) ** 0.5 for epoch in range(1, epochs + 1)]


class FakeTrain:
    """``trainer.train`` without training; ``calls`` holds the configurations it was given and
    ``tick`` (if set) is called once per epoch, e.g. to move a fake clock."""

    def __init__(
        self,
        curve: Callable[[trainer.TrainConfig], list[float]] = config_curve,
        *,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.curve, self.tick = curve, tick
        self.epoch_seconds = 0.01  # the training time each epoch reports
        self.calls: list[trainer.TrainConfig] = []
        self.checkpoint_path: Path | None = None  # the latest one given

    def __call__(
        self,
        cfg: trainer.TrainConfig,
        *,
        reporter: Any = None,
        checkpoint_path: str | Path | None = None,
        **_: Any,
    ) -> trainer.TrainResult:
        self.calls.append(cfg)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        reporter = reporter or trainer.NullReporter()
        step = getattr(reporter, "step", None)
        curve = self.curve(cfg)
        result = trainer.TrainResult(status="complete", reason=f"ran all {len(curve)} epochs")
        for epoch, acc in enumerate(curve, 1):
            if self.tick is not None:
                self.tick()
            if step is not None and step(epoch, 1, 1, cfg.data.batch_size):
                done = len(result.history)
                result.status = "budget"
                result.reason = (
                    f"budget: the wall-clock budget ran out in epoch {epoch}; {done} kept"
                )
                break
            metrics = {
                "epoch": epoch, "train_loss": 1.0 - acc, "train_acc": acc,
                "val_loss": 1.0 - acc, "val_acc": acc, "lr": cfg.optim.lr,
                "seconds": self.epoch_seconds,
            }  # fmt: skip
            result.history.append(metrics)
            if result.best_epoch < 0 or acc > result.history[result.best_epoch - 1]["val_acc"]:
                result.best_epoch = epoch
            reporter.report(epoch, metrics)
            if reporter.should_stop():
                result.status, result.reason = "pruned", f"pruned after epoch {epoch}"
                break
        result.train_seconds = self.epoch_seconds * len(result.history)
        if checkpoint_path is not None and result.status == "complete":
            path = Path(checkpoint_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights of " + path.name.encode())
            result.checkpoint = str(path)
        return result
