"""Learning-rate schedules by name: none, cosine, plateau, step, onecycle, each with an
optional linear warmup of ``sched.warmup_epochs`` epochs.

``create_scheduler(optimizer, cfg, epochs=..., steps_per_epoch=...)`` returns a ``Scheduler``
the loop calls twice: ``step_update(step)`` before every optimizer step (``step`` counts steps
from 0 over the whole run) and ``epoch_end(epoch, val_acc)`` after every epoch. The lr of step
t is ``base_lr * warmup(t) * factor(t)``: warmup rises linearly to 1 over the warmup steps
(nanoGPT's ``(t + 1) / warmup``), and the named schedule's factor runs over the epochs after
the warmup. Plain floats on the host: no device work, no sync. As in timm's
``scheduler_factory``, the loop needs no branch per schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer._registry import Registry
from trainer.config import SchedConfig

_SCHEDULERS: Registry = Registry("scheduler")

ONECYCLE_PCT_START = 0.3  # torch's OneCycleLR defaults: share of the steps spent rising,
ONECYCLE_DIV = 25.0  # start at lr / 25,
ONECYCLE_FINAL_DIV = 1e4  # end at lr / 25 / 1e4


def list_schedulers() -> list[str]:
    return _SCHEDULERS.names()


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: SchedConfig | str,
    *,
    epochs: int,
    steps_per_epoch: int,
) -> Scheduler:
    """The ``cfg.name`` schedule for ``optimizer`` over ``epochs`` of ``steps_per_epoch``."""
    if isinstance(cfg, str):
        cfg = SchedConfig(name=cfg)
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"epochs and steps_per_epoch must be >= 1, but got {epochs=}, {steps_per_epoch=}"
        )
    return _SCHEDULERS.get(cfg.name)(optimizer, cfg, epochs=epochs, steps_per_epoch=steps_per_epoch)


class Scheduler:
    """Constant lr after the warmup (``none``); subclasses override ``factor``/``epoch_end``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: SchedConfig,
        *,
        epochs: int,
        steps_per_epoch: int,
    ) -> None:
        # SAM steps through its base optimizer, which shares its param groups. The groups are
        # looked up at every step: loading an optimizer state replaces them.
        self.optimizer = getattr(optimizer, "base_optimizer", optimizer)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.cfg, self.epochs, self.steps_per_epoch = cfg, epochs, steps_per_epoch
        self.warmup_epochs = min(cfg.warmup_epochs, epochs - 1)  # leave the schedule one epoch
        self.warmup_steps = self.warmup_epochs * steps_per_epoch
        self.scale = 1.0  # changed by epoch_end where the schedule reacts to the metric

    def step_update(self, step: int) -> None:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        f = warm * self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def factor(self, step: int) -> float:
        return self.scale

    def epoch_end(self, epoch: int, metric: float) -> None:
        pass

    def main_epoch(self, step: int) -> tuple[int, int]:
        """(0-based epoch after the warmup, number of such epochs) for a global step."""
        return max(0, step // self.steps_per_epoch - self.warmup_epochs), max(
            1, self.epochs - self.warmup_epochs
        )

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])


@_SCHEDULERS.register("none")
class _Constant(Scheduler):
    pass


@_SCHEDULERS.register("cosine")
class _Cosine(Scheduler):
    """Cosine annealing per epoch to ``sched.min_lr`` (CosineAnnealingLR with T_max = the
    epochs after the warmup, stepped once per epoch)."""

    def factor(self, step: int) -> float:
        k, n = self.main_epoch(step)
        lr = self.base_lrs[0]
        floor = min(self.cfg.min_lr, lr) / lr
        return floor + (1 - floor) * (1 + math.cos(math.pi * k / n)) / 2


@_SCHEDULERS.register("step")
class _Step(Scheduler):
    """Multiply the lr by ``sched.factor`` every ``sched.step_epochs`` epochs."""

    def factor(self, step: int) -> float:
        k, _ = self.main_epoch(step)
        return self.cfg.factor ** (k // self.cfg.step_epochs)


@_SCHEDULERS.register("onecycle")
class _OneCycle(Scheduler):
    """torch's OneCycleLR, per step over the steps after the warmup: cosine up from lr/25 over
    the first 30 % of them, then cosine down to lr/25/1e4."""

    def factor(self, step: int) -> float:
        total = max(2, self.epochs * self.steps_per_epoch - self.warmup_steps)
        t = max(0, step - self.warmup_steps)
        peak = ONECYCLE_PCT_START * total - 1  # OneCycleLR's end of the first phase
        lo, end = 1 / ONECYCLE_DIV, 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        if peak > 0 and t <= peak:
            a, b, p = lo, 1.0, t / peak
        else:
            a, b, p = 1.0, end, min(1.0, (t - peak) / (total - 1 - peak))
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2


@_SCHEDULERS.register("plateau")
class _Plateau(Scheduler):
    """ReduceLROnPlateau on val_acc (mode max, relative threshold 1e-4): multiply the lr by
    ``sched.factor`` after more than ``sched.patience`` epochs without improvement."""

    THRESHOLD = 1e-4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.best, self.bad_epochs = -math.inf, 0

    def epoch_end(self, epoch: int, metric: float) -> None:
        if epoch <= self.warmup_epochs:
            return
        if metric > self.best * (1 + self.THRESHOLD):  # torch's mode max, threshold rel
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            self.scale *= self.cfg.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


__all__ = ["Scheduler", "create_scheduler", "list_schedulers"]
