"""Cost-aware search: what a trial will cost here, and the budgets that decide with it.

- ``Budget``: the wall-clock budget of one ``search run`` (``--budget 30m``, ``budget.wall``)
  and the per-trial limit (``--max-trial-minutes``, ``budget.max_trial_minutes``).
- ``CostModel``: a trial's estimated seconds = epochs x training images / measured images/s,
  plus evaluation. Throughput is measured on first use of a (backbone, image size, batch size,
  SAM or not, device) key by ``trainer.measure_throughput`` and stored in the study, so every
  worker on the storage reuses it.

Measuring is plain PyTorch (``trainer``); deciding with the figure is search policy (here).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import optuna

import trainer
from search import storage as storage_mod
from trainer.throughput import device_label

THROUGHPUT_PREFIX = "throughput:"  # study user attribute keys of the throughput cache
# A forward pass costs about a third of a training step (forward + backward + update); SAM's
# step has two forward-backward passes, so its evaluation is about a sixth of a step.
_EVAL_SHARE = {False: 3.0, True: 6.0}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(value: Any, *, key: str = "--budget") -> float:
    """``30m``, ``2h``, ``45s``, or a bare number of seconds -> seconds (> 0)."""
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.strip().lower())
        if m:
            seconds = float(m[1]) * _UNITS[m[2] or "s"]
    if seconds is None:
        raise ValueError(
            f"{key} must be a duration such as 30m, 2h, 45s or a number of seconds, "
            f"but got {value!r}"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{key} must be more than 0 seconds (e.g. 30m), but got {value!r}")
    return seconds


def parse_minutes(value: Any, *, key: str = "--max-trial-minutes") -> float:
    """A positive number of minutes (int or float) -> seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number of minutes such as 5 or 2.5, but got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{key} must be more than 0 minutes (e.g. 5), but got {value!r}")
    return float(value) * 60.0


@dataclass(frozen=True)
class Budget:
    wall_seconds: float | None = None  # this command's wall-clock budget
    max_trial_seconds: float | None = None  # a configuration estimated longer is not trained

    @property
    def costed(self) -> bool:
        """Whether trials need a cost estimate before they train."""
        return self.wall_seconds is not None or self.max_trial_seconds is not None


def resolve_budget(
    section: dict[str, Any],
    *,
    where: str = "study file",
    wall: str | float | None = None,
    max_trial_minutes: float | None = None,
) -> Budget:
    """The study file's ``[budget]`` wall / max_trial_minutes, overridden by the flags."""
    if wall is not None:
        wall_s = parse_duration(wall, key="--budget")
    elif "wall" in section:
        wall_s = parse_duration(section["wall"], key=f"{where} [budget] wall")
    else:
        wall_s = None
    if max_trial_minutes is not None:
        trial_s = parse_minutes(max_trial_minutes, key="--max-trial-minutes")
    elif "max_trial_minutes" in section:
        key = f"{where} [budget] max_trial_minutes"
        trial_s = parse_minutes(section["max_trial_minutes"], key=key)
    else:
        trial_s = None
    return Budget(wall_seconds=wall_s, max_trial_seconds=trial_s)


def fmt_duration(seconds: float) -> str:
    """45s, 2m05s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cache_key(cfg: trainer.TrainConfig, device: str) -> str:
    """``throughput:resnet18|64px|batch32|plain|cpu:2t``: what decides a step's cost."""
    sam = cfg.optim.name.startswith("sam")  # sam_sgd, sam_adam: two passes per step
    # the built-in small CNN's cost grows with its drawn width (8..32 channels), so it is
    # part of the backbone's name here; timm backbones ignore model.width
    backbone = cfg.model.backbone
    if backbone == "small_cnn":
        backbone += f"-w{cfg.model.width}"
    return (
        f"{THROUGHPUT_PREFIX}{backbone}|{cfg.data.image_size}px|"
        f"batch{cfg.data.batch_size}|{'sam' if sam else 'plain'}|{device}"
    )


@dataclass(frozen=True)
class Estimate:
    seconds: float  # all epochs, training and evaluation
    images_per_second: float
    key: str  # the throughput cache entry it used
    measured: bool  # this call measured it (else it came from the study)


class CostModel:
    """Estimates a trial's seconds from a per-study throughput cache.

    The cache lives in the study's user attributes, one key per (backbone, image size, batch,
    SAM, device). Optuna 5 removed ``Study.set_system_attr``/``Study.system_attrs`` (they were
    deprecated since 3.1), so user attributes are the public, storage-wide place; the keys
    start with ``throughput:`` and nothing else in hpsearch uses that prefix.
    """

    def __init__(
        self,
        study: optuna.Study,
        *,
        url: str | None = None,
        measure: Callable[..., trainer.Throughput] | None = None,
    ) -> None:
        self.study, self.url = study, url
        self.measure = measure or (lambda *a, **k: trainer.measure_throughput(*a, **k))

    def images_per_second(
        self, cfg: trainer.TrainConfig, data: trainer.ImageData
    ) -> tuple[float, str, bool]:
        """(images/s, cache key, measured now?). Measured once per key for all workers: the
        first one measures under a storage-wide lock while the others wait and then read."""
        key = cache_key(cfg, device_label(trainer.select_device(cfg.train.device)))
        cached = self.study.user_attrs.get(key)
        if cached:
            return float(cached["images_per_second"]), key, False
        # hold_limit: the measurement runs while the lock's transaction sits idle
        lock = storage_mod.exclusive(self.url, key, hold_limit=600.0) if self.url else nullcontext()
        with lock:
            cached = self.study.user_attrs.get(key)  # another worker was first
            if cached:
                return float(cached["images_per_second"]), key, False
            t0 = time.perf_counter()
            got = self.measure(cfg, num_classes=data.num_classes, in_chans=data.in_chans)
            self.study.set_user_attr(
                key,
                {
                    "images_per_second": got.images_per_second,
                    "steps": got.steps,
                    "seconds": round(time.perf_counter() - t0, 2),
                },
            )
        return got.images_per_second, key, True

    def estimate(self, cfg: trainer.TrainConfig, data: trainer.ImageData) -> Estimate:
        ips, key, measured = self.images_per_second(cfg, data)
        return Estimate(estimate_seconds(cfg, data, ips), ips, key, measured)


def estimate_seconds(cfg: trainer.TrainConfig, data: trainer.ImageData, ips: float) -> float:
    """All epochs of ``cfg`` at ``ips`` training images/s: training plus evaluation."""
    n, bs = len(data.x_train), cfg.data.batch_size
    trained = max(1, n // bs) * bs if n >= bs else n  # the loop drops the ragged last batch
    sam = cfg.optim.name.startswith("sam")
    per_epoch = trained / ips + len(data.x_val) / (ips * _EVAL_SHARE[sam])
    return cfg.train.epochs * per_epoch


__all__ = [
    "Budget",
    "CostModel",
    "Estimate",
    "cache_key",
    "estimate_seconds",
    "fmt_duration",
    "parse_duration",
    "parse_minutes",
    "resolve_budget",
]
