"""What a trial will cost here: ``CostModel`` estimates a trial's seconds = epochs x training
images (x ``data.epoch_repeats``) / measured images/s, plus evaluation. Throughput is measured
on first use of a (backbone, image size, batch size, SAM or not, device) key by
``trainer.measure_throughput`` and stored in the study, so every worker on the storage reuses
it.

Measuring is plain PyTorch (``trainer``); deciding with the figure is search policy (here and
``search.study.budget``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import optuna

import trainer
from search.store import FINISHED, Storage
from trainer.throughput import device_label

THROUGHPUT_PREFIX = "throughput:"  # study user attribute keys of the throughput cache
# A forward pass costs about a third of a training step (forward + backward + update); SAM's
# step has two forward-backward passes, so its evaluation is about a sixth of a step.
_EVAL_SHARE = {False: 3.0, True: 6.0}
# Calibration: measured / estimated seconds per epoch of the study's trained trials. The probe
# times bare steps on synthetic pixels; a real epoch adds augmentation, evaluation set-up,
# storage writes and the per-epoch state file, which dominate for small models and data.
CALIBRATION_TRIALS = 20  # the latest trained trials that set the factor
CALIBRATION_RANGE = (0.25, 20.0)
# Under a bracket pruner, the a priori epoch share counts as this many trials in the mean of
# the shares trials ran: the first few trials' shares (the first trial always passes every
# rung) would otherwise swing the estimate.
PRIOR_TRIALS = 3


def cache_key(cfg: trainer.TrainConfig, device: str) -> str:
    """``throughput:resnet18|64px|batch32|plain|cpu:2t``: what decides a step's cost."""
    sam = cfg.optim.name.startswith("sam")  # sam_sgd, sam_adam: two passes per step
    # the built-in small CNN's cost grows with its drawn width (8..32 channels), so it is
    # part of the backbone's name here; timm backbones ignore model.width
    backbone = cfg.model.backbone
    if backbone == "small_cnn":
        backbone += f"-w{cfg.model.width}"
    # the probe measures with the trial's memory format and mixed precision: a study that
    # turns either off measures apart (train.compile is not probed: calibration covers it)
    switches = ("" if cfg.train.channels_last else "|nchw") + ("" if cfg.train.amp else "|noamp")
    return (
        f"{THROUGHPUT_PREFIX}{backbone}|{cfg.data.image_size}px|"
        f"batch{cfg.data.batch_size}|{'sam' if sam else 'plain'}{switches}|{device}"
    )


@dataclass(frozen=True)
class TrialCost:
    """What one trial of a configuration is expected to cost here."""

    seconds: float  # all epochs, training and evaluation, calibrated
    images_per_second: float
    key: str  # the throughput cache entry it used
    measured: bool  # this call measured it (else it came from the study)
    raw_seconds: float = 0.0  # before calibration: what the probe alone predicts
    calibration: float = 1.0  # measured / predicted per-epoch seconds of earlier trials
    epoch_share: float = 1.0  # epochs earlier trials ran / their train.epochs (pruning, stopping)

    @property
    def expected_seconds(self) -> float:
        """What the trial is expected to take: most trials stop early (pruned at a rung,
        early stopping), so the time left is planned with this, not ``seconds``."""
        return self.seconds * self.epoch_share


class DoesNotFit(Exception):
    """The configuration runs out of device memory in the speed probe even at the smallest
    micro-batch: its trial ends PRUNED with status ``oom`` and is not trained. The cache
    remembers it, so the same key is not probed again."""


def _cached_speed(entry: dict) -> float:
    if entry.get("oom"):
        raise DoesNotFit(f"oom: the speed probe ran {entry['oom']} (an earlier trial's probe)")
    return float(entry["images_per_second"])


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
        storage: Storage | None = None,
        measure: Callable[..., trainer.Throughput] | None = None,
        prior_share: float = 1.0,
    ) -> None:
        self.study, self.storage = study, storage  # storage: whose lock serialises measuring
        self.measure = measure or (lambda *a, **k: trainer.measure_throughput(*a, **k))
        if not 0.0 < prior_share <= 1.0:
            raise ValueError(f"prior_share must be in (0, 1], but got {prior_share=}")
        # the share of train.epochs a trial is expected to run before any trial has run:
        # below 1 under a bracket pruner (search.study.samplers.expected_epoch_share)
        self.prior_share = prior_share

    def images_per_second(
        self, cfg: trainer.TrainConfig, data: trainer.ImageData
    ) -> tuple[float, str, bool]:
        """(images/s, cache key, measured now?). Measured once per key for all workers: the
        first one measures under a storage-wide lock while the others wait and then read.
        ``DoesNotFit`` when the probe ran out of memory (now or before, for this key)."""
        key = cache_key(cfg, device_label(trainer.select_device(cfg.train.device)))
        cached = self.study.user_attrs.get(key)
        if cached:
            return _cached_speed(cached), key, False
        # hold_limit: the measurement runs while the lock's transaction sits idle
        lock = self.storage.exclusive(key, hold_limit=600.0) if self.storage else nullcontext()
        with lock:
            cached = self.study.user_attrs.get(key)  # another worker was first
            if cached:
                return _cached_speed(cached), key, False
            t0 = time.perf_counter()
            try:
                got = self.measure(cfg, num_classes=data.num_classes, in_chans=data.in_chans)
            except trainer.ProbeOutOfMemory as exc:
                # remembered like a speed: samplers ignore FAIL, so an unremembered
                # configuration that does not fit would be drawn and probed again and again
                reason = str(exc)
                self.study.set_user_attr(
                    key, {"oom": reason, "seconds": round(time.perf_counter() - t0, 2)}
                )
                raise DoesNotFit(f"oom: the speed probe ran {reason}") from None
            self.study.set_user_attr(
                key,
                {
                    "images_per_second": got.images_per_second,
                    "steps": got.steps,
                    "seconds": round(time.perf_counter() - t0, 2),
                },
            )
        return got.images_per_second, key, True

    def estimate(self, cfg: trainer.TrainConfig, data: trainer.ImageData) -> TrialCost:
        ips, key, measured = self.images_per_second(cfg, data)
        raw = estimate_seconds(cfg, data, ips)
        factor, share = self.calibration()
        return TrialCost(raw * factor, ips, key, measured, raw, factor, share)

    def calibration(self) -> tuple[float, float]:
        """(measured / estimated seconds per epoch, epochs run / train.epochs) over the
        study's latest trained trials: medians; (1, prior share) before any. Under a bracket
        pruner (prior share < 1) the share is the mean, with the prior counted as
        ``PRIOR_TRIALS`` trials: the few trials promoted to the top rung cost most of the
        time, and a median, the first rung's share, would leave them out."""
        ratios, shares = [], []
        for t in self.study.get_trials(deepcopy=False, states=FINISHED)[-CALIBRATION_TRIALS:]:
            a = t.user_attrs
            raw, run, secs = (
                a.get("raw_estimated_seconds"),
                a.get("epochs_run"),
                a.get("train_seconds"),
            )
            epochs = (a.get("config") or {}).get("train.epochs")
            if not (raw and run and secs and epochs) or a.get("resumed_from_epoch"):
                continue
            ratios.append((secs / run) / (raw / epochs))
            if a.get("refit_of") is None:  # a refit runs to the end by design: no search trial
                shares.append(min(1.0, run / epochs))
        if self.prior_share < 1.0:
            share = (self.prior_share * PRIOR_TRIALS + sum(shares)) / (PRIOR_TRIALS + len(shares))
        else:
            share = statistics.median(shares) if shares else 1.0
        if not ratios:
            return 1.0, share
        low, high = CALIBRATION_RANGE
        return min(high, max(low, statistics.median(ratios))), share


def estimate_seconds(cfg: trainer.TrainConfig, data: trainer.ImageData, ips: float) -> float:
    """All epochs of ``cfg`` at ``ips`` training images/s: training plus evaluation. An epoch
    trains on every image ``data.epoch_repeats`` times."""
    return trial_seconds(
        ips,
        epochs=cfg.train.epochs,
        n_train=len(data.x_train) * cfg.data.epoch_repeats,
        n_val=len(data.x_val),
        step_images=cfg.data.batch_size * cfg.train.accum_steps,
        sam=cfg.optim.name.startswith("sam"),
    )


def trial_seconds(
    ips: float, *, epochs: int, n_train: int, n_val: int, step_images: int = 1, sam: bool = False
) -> float:
    """Seconds of ``epochs`` epochs at ``ips`` training images/s: the trained images (the loop
    drops the ragged last step) plus the validation pass."""
    trained = max(1, n_train // step_images) * step_images if n_train >= step_images else n_train
    return epochs * (trained / ips + n_val / (ips * _EVAL_SHARE[sam]))


__all__ = [
    "CostModel",
    "DoesNotFit",
    "TrialCost",
    "cache_key",
    "estimate_seconds",
    "trial_seconds",
]
