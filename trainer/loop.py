"""The training loop: readable top to bottom, hooks instead of exceptions.

``train(cfg, reporter=...)`` trains one configuration and returns a ``TrainResult``. After
every epoch it calls ``reporter.report(epoch, metrics)`` and then asks
``reporter.should_stop()`` (pruning is the caller's decision, not an exception from inside).
A reporter may also have ``step(epoch, step, steps_per_epoch, images) -> bool``, called after
every training step (progress bars; a caller's deadline): True stops the run at once, with
status ``budget`` and the finished epochs kept.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from timm.utils import ModelEmaV3
from torch import nn

from trainer import _faults
from trainer import augment as _augment
from trainer.checkpoint import load_pretrained, save_checkpoint
from trainer.config import MONITORS, TrainConfig
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, ImageData, load_data
from trainer.data.prefetch import HostBatches
from trainer.data.resize import CROP_PCT
from trainer.device import amp_dtype, configure, free_bytes, precision_name, select_device
from trainer.evaluate import confusion_matrix, macro_f1
from trainer.losses import create_loss
from trainer.models import (
    Classifier,
    create_model,
    for_model,
    input_stats,
    pretrained_data_config,
)
from trainer.optim import create_optimizer
from trainer.resume import TrainState, load_state, restore, snapshot_state, write_state
from trainer.schedulers import create_scheduler
from trainer.steps import MIN_MICRO_BATCH, Batch, halved, make_step

log = logging.getLogger("trainer")
EVAL_BATCH = 512
CHECK_EVERY = 8  # training steps between host reads of the loss (non-finite check)
DEVICE_CACHE_SHARE = 0.5  # data.device_cache=auto: the images may take this share of free memory


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...

    # Optional: step(epoch, step, steps_per_epoch, images) -> bool, after every training step
    # (1-based step; images trained so far this epoch). Called from the host with plain ints,
    # never a device value, so it adds no host-device sync. True: stop now (a deadline).


StepHook = Callable[[int, int, int, int], bool]


class NullReporter:
    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class TrainResult:
    status: str  # complete | early_stopped | pruned | nonfinite_loss | oom | budget
    reason: str
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    # 1-based epoch with the best cfg.train.monitor (val_acc by default), whose weights are
    # kept; -1 when none finished
    best_epoch: int = -1
    train_seconds: float = 0.0  # wall time of the epochs (data loading excluded)
    setup_seconds: float = 0.0  # data ready + model built
    checkpoint: str | None = None
    model: nn.Module | None = field(default=None, repr=False)  # best weights, in eval mode
    param_count: int = 0  # parameters of the model, head included
    trainable_param_count: int = 0  # of those, the ones the optimizer updates (transfer)
    # what the run had to change or reuse: oom_retries, micro_batch, accum_steps,
    # effective_batch (out of memory), resumed_from_epoch / resume_skipped (a resumed run),
    # device_cache (the images went to host memory), precision (bf16 | fp16 | fp32 on CUDA)
    adjustments: dict[str, Any] = field(default_factory=dict)
    # the returned model's predicted class of each validation image (CPU), from the evaluation
    # that chose it: a confusion matrix needs no second pass over the validation set
    val_predictions: torch.Tensor | None = field(default=None, repr=False)
    # (mean, std) the run normalised its inputs with: evaluate the model with the same
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def best_val_acc(self) -> float:
        return self.history[self.best_epoch - 1]["val_acc"] if self.best_epoch > 0 else math.nan

    def best_metric(self, name: str) -> float:
        """``name`` (``val_acc``, ``val_loss``, ``val_f1``, ...) at the best epoch: the score
        of the kept weights; NaN when no epoch finished."""
        return self.history[self.best_epoch - 1][name] if self.best_epoch > 0 else math.nan

    def curves(self) -> dict[str, list[float]]:
        """Per-epoch metric lists, e.g. ``{"val_acc": [...], "train_loss": [...]}``."""
        keys = self.history[0].keys() if self.history else ()
        return {k: [h[k] for h in self.history] for k in keys if k != "epoch"}

    def summary(self) -> dict[str, Any]:
        c = self.curves()
        return {
            "status": self.status,
            "reason": self.reason,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "best_val_acc": self.best_val_acc,
            "final_val_acc": c["val_acc"][-1] if c else math.nan,
            "max_train_acc": max(c["train_acc"]) if c else math.nan,
            "train_seconds": self.train_seconds,
            # counted once the model is built (an out-of-memory result may have none)
            **(
                {
                    "param_count": self.param_count,
                    "trainable_param_count": self.trainable_param_count,
                }
                if self.param_count
                else {}
            ),
        }


def build_model(cfg: TrainConfig, data: ImageData, device: torch.device) -> Classifier:
    """Seeded model with pretrained weights and freezing applied. Equal seeds and configs give
    identical initial weights, so trials are paired comparisons (seed 004)."""
    input_stats(cfg, data)  # data.normalize = "pretrained" for weights without stats: refused
    _check_pretrained_inputs(cfg)
    torch.manual_seed(cfg.train.seed)
    model = create_model(
        cfg.model,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        image_size=cfg.data.image_size,
    )
    if cfg.model.pretrained not in (None, "imagenet"):
        load_pretrained(model, cfg.model.pretrained)
    _apply_strategy(model, cfg)
    model = model.to(device)
    if cfg.train.channels_last and device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    return model


_WARNED: set[str] = set()


def _check_pretrained_inputs(cfg: TrainConfig) -> None:
    """One warning per process where ImageNet weights will see inputs prepared otherwise than
    they were trained with (timm's data config): another mean/std, or another centre crop."""
    if cfg.model.pretrained != "imagenet":
        return
    own = pretrained_data_config(cfg.model.backbone)
    if own is None:
        return
    name, d = cfg.model.backbone, cfg.data
    notes = []
    if d.normalize == "imagenet" and (tuple(own["mean"]), tuple(own["std"])) != (
        IMAGENET_MEAN,
        IMAGENET_STD,
    ):
        notes.append(
            f"the weights of {name!r} were trained with mean {_short(own['mean'])} and std "
            f"{_short(own['std'])}, not ImageNet's: data.normalize = 'pretrained' uses them"
        )
    crop = d.crop_pct if d.crop_pct is not None else CROP_PCT
    if d.normalize == "pretrained" and d.eval_resize == "center_crop" and crop != own["crop_pct"]:
        notes.append(
            f"the weights of {name!r} are evaluated with a centre crop of "
            f"{own['crop_pct']:g}, this run with {crop:g}: data.crop_pct = {own['crop_pct']:g} "
            "does as they do"
        )
    for note in notes:
        if note not in _WARNED:
            _WARNED.add(note)
            log.warning(note)


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _apply_strategy(model: Classifier, cfg: TrainConfig) -> None:
    if cfg.model.strategy == "full":
        return
    stages = model.stages()
    k = len(stages) if cfg.model.strategy == "linear_probe" else cfg.model.freeze_stages
    if cfg.model.strategy == "partial" and not 0 < k < len(stages):
        raise ValueError(
            f"model.freeze_stages must be in 1..{len(stages) - 1} for {cfg.model.backbone!r} "
            f"with strategy=partial, but got {k}"
        )
    for stage in stages[:k]:
        for p in stage:
            p.requires_grad_(False)


class _ReportOnce:
    """Passes each epoch to the reporter once: a run restarted after running out of memory
    replays epochs the reporter has already seen."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.seen: dict[int, dict[str, float]] = {}

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in self.seen:
            self.seen[epoch] = metrics
            self.inner.report(epoch, metrics)

    def should_stop(self) -> bool:
        return self.inner.should_stop()


class _ResumeFailed(Exception):
    pass


def train(
    cfg: TrainConfig,
    *,
    reporter: Reporter | None = None,
    checkpoint_path: str | Path | None = None,
    data: ImageData | None = None,
    resume_from: str | Path | None = None,
    last_checkpoint_path: str | Path | None = None,
) -> TrainResult:
    """Train ``cfg``; see the module docstring for the reporter protocol.

    ``last_checkpoint_path``: after every epoch that is not the last, the whole run state
    (weights, optimizer, scheduler, EMA, RNGs, history) is written there, and removed when the
    run ends; ``resume_from`` continues a run from such a file (a killed trial's), replaying its
    epochs to the reporter. A file that is missing, damaged, or for another configuration is
    noted in ``adjustments["resume_skipped"]`` and the run starts from epoch 1. On a GPU the
    file is written on a background thread while the next epoch trains.

    Out of memory (a CUDA OOM) while the images are put on the device: they stay in host
    memory instead, each batch copied over (the same run, slower). Out of memory in a step:
    the micro-batch is halved and gradient accumulation doubled. A step still sees the same
    images, augmented the same way, and its gradient is still their mean (see
    ``trainer.steps``), so for a model without batch statistics the update is the same; with
    BatchNorm each micro-batch is normalised by its own statistics, so the update differs
    slightly. The run continues from its last finished epoch (or restarts) and
    ``adjustments`` records it. Below ``MIN_MICRO_BATCH`` the result has status ``oom``.
    """
    reporter = reporter or NullReporter()
    on_step: StepHook | None = getattr(reporter, "step", None)  # optional: looked up once
    reporter = _ReportOnce(reporter)
    # the mean/std the model is fed with (the pretrained weights' own under "pretrained"): the
    # run, its checkpoint and its result use them
    data = for_model(cfg, data or load_data(cfg.data))
    writer = _StateWriter(background=_write_in_background(cfg))
    try:
        result = _train_retrying(
            cfg, reporter=reporter, on_step=on_step, checkpoint_path=checkpoint_path, data=data,
            resume_from=resume_from, last_checkpoint_path=last_checkpoint_path, writer=writer,
        )  # fmt: skip
    except BaseException:
        writer.close(check=False)  # the error on its way says more than a failed write
        raise
    writer.close()
    if last_checkpoint_path is not None:
        Path(last_checkpoint_path).unlink(missing_ok=True)  # only a killed run needs it
    return result


def _train_retrying(
    cfg: TrainConfig,
    *,
    reporter: _ReportOnce,
    on_step: StepHook | None,
    checkpoint_path: str | Path | None,
    data: ImageData,
    resume_from: str | Path | None,
    last_checkpoint_path: str | Path | None,
    writer: _StateWriter,
) -> TrainResult:
    """``_train_once``, again from the last finished epoch with half the micro-batch after
    each out-of-memory error, or from epoch 1 when the resume state does not fit."""
    faults = _faults.installed()  # None outside tests; read once, never per step
    oom_error = _faults.out_of_memory_error()
    notes: dict[str, Any] = {}
    resume = _read_resume(resume_from, cfg, notes)
    if resume is not None:
        notes["resumed_from_epoch"] = resume.epoch
    batch = cfg.data.batch_size * cfg.train.accum_steps  # images per optimizer step
    micro, ooms = cfg.data.batch_size, 0  # images per forward/backward pass
    while True:
        try:
            result = _train_once(
                cfg, reporter=reporter, checkpoint_path=checkpoint_path, data=data,
                micro_batch=micro, eval_batch=max(1, EVAL_BATCH >> ooms), resume=resume,
                last_checkpoint_path=last_checkpoint_path, faults=faults, on_step=on_step,
                writer=writer,
            )  # fmt: skip
            break
        except _ResumeFailed as exc:
            notes.pop("resumed_from_epoch", None)
            notes["resume_skipped"] = str(exc)
            resume = None
            continue
        except oom_error as exc:
            error = str(exc).splitlines()[0] if str(exc) else "out of memory"
        _free_memory()  # outside the except block: its traceback held the step's tensors
        ooms += 1
        accum = -(-batch // micro)
        smaller = halved(micro)
        if smaller is None:
            history = [reporter.seen[e] for e in sorted(reporter.seen)]
            result = TrainResult(
                status="oom",
                reason=(
                    f"oom: out of memory at micro-batch {micro} x {accum} accumulation steps, "
                    f"the smallest allowed is {MIN_MICRO_BATCH} ({error})"
                ),
                history=history,
            )
            break
        micro = smaller
        resume = None
        if last_checkpoint_path is not None:  # continue from the last finished epoch
            writer.wait()
            resume = _read_resume(last_checkpoint_path, cfg, {})
    if ooms:
        notes.update(
            oom_retries=ooms, micro_batch=micro, accum_steps=-(-batch // micro),
            effective_batch=batch,
        )  # fmt: skip
    result.adjustments.update(notes)
    return result


def _read_resume(path: str | Path | None, cfg: TrainConfig, notes: dict[str, Any]):
    if not path:
        return None
    try:
        return load_state(path, config=cfg.to_flat())
    except ValueError as exc:
        notes["resume_skipped"] = str(exc)
        return None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_in_background(cfg: TrainConfig) -> bool:
    """Resume states are written on a thread where a GPU trains meanwhile; on a CPU the
    writing would take the cores the training uses, so it stays in line."""
    return select_device(cfg.train.device).type == "cuda"


class _StateWriter:
    """Writes resume states one at a time, in order, on a background thread or in line;
    ``wait`` returns once the last one is on disk (before the file is read or deleted)."""

    def __init__(self, *, background: bool) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="resume-state") if background else None
        self.pending: Future | None = None

    def write(self, path: str | Path, snapshot: tuple[dict[str, torch.Tensor], dict]) -> None:
        if self.pool is None:
            write_state(path, snapshot)
            return
        self.wait()
        self.pending = self.pool.submit(write_state, path, snapshot)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()  # a failed write raises here

    def close(self, *, check: bool = True) -> None:
        try:
            if check:
                self.wait()
            elif self.pending is not None:
                self.pending.exception()  # wait for it, and leave its error aside
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _train_once(
    cfg: TrainConfig,
    *,
    reporter: Reporter,
    checkpoint_path: str | Path | None,
    data: ImageData,
    micro_batch: int,
    eval_batch: int,
    resume: TrainState | None,
    last_checkpoint_path: str | Path | None,
    faults: _faults.Faults | None,
    on_step: StepHook | None,
    writer: _StateWriter,
) -> TrainResult:
    """The epoch loop: train an epoch, evaluate, keep the best, schedule, report, stop."""
    t_setup = time.perf_counter()
    run = _Run(cfg, data, micro_batch=micro_batch, faults=faults)
    result = TrainResult(status="complete", reason=f"ran all {cfg.train.epochs} epochs")
    result.normalization = (tuple(data.mean), tuple(data.std))
    result.param_count = sum(p.numel() for p in run.model.parameters())
    result.trainable_param_count = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    if run.data_on == "host" and (cfg.data.device_cache == "auto" or run.placement_oom):
        result.adjustments["device_cache"] = "host"  # the images did not fit the device
    if run.device.type == "cuda":
        result.adjustments["precision"] = precision_name(run.amp_dtype)
    first_epoch = 1 if resume is None else run.resume(resume, result, reporter)
    result.setup_seconds = time.perf_counter() - t_setup
    t_train = time.perf_counter()
    if resume is not None and reporter.should_stop():
        result.status, result.reason = "pruned", f"pruned after epoch {resume.epoch}"
        first_epoch = cfg.train.epochs + 1  # no epoch left to run

    for epoch in range(first_epoch, cfg.train.epochs + 1):
        t_epoch = time.perf_counter()
        train_loss, train_acc, stop = run.train_epoch(epoch, on_step, done=len(result.history))
        if stop is not None:  # a non-finite loss, or the caller's deadline
            result.status, result.reason = stop
            break
        predictions: list[torch.Tensor] = []
        val_loss, val_acc = evaluate(
            run.eval_model, run.x_val, run.y_val, run.criterion, run.prepare, amp=run.amp,
            amp_dtype=run.amp_dtype, batch=eval_batch, predictions=predictions,
        )  # fmt: skip
        # macro-F1 from the confusion counts: one small copy to the host per epoch
        cm = confusion_matrix(run.y_val, torch.cat(predictions), data.num_classes).cpu()
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "val_f1": macro_f1(cm),
            "lr": run.lr,
            "seconds": time.perf_counter() - t_epoch,
        }
        result.history.append(metrics)
        run.keep_if_best(epoch, metrics, predictions)
        run.scheduler.epoch_end(epoch, val_acc)
        reporter.report(epoch, metrics)
        if reporter.should_stop():
            result.status, result.reason = "pruned", f"pruned after epoch {epoch}"
            break
        if cfg.train.patience and run.since_best >= cfg.train.patience and epoch < cfg.train.epochs:
            result.status = "early_stopped"
            result.reason = (
                f"no {cfg.train.monitor} gain for {run.since_best} epochs; "
                f"best epoch {run.best_epoch}"
            )
            break
        if last_checkpoint_path is not None and epoch < cfg.train.epochs:
            run.save(last_checkpoint_path, epoch=epoch, history=result.history, writer=writer)

    result.train_seconds = time.perf_counter() - t_train + run.resumed_seconds
    result.best_epoch = run.best_epoch
    result.model = run.best_model()  # early stopping keeps the best state (seed 004)
    if run.best_pred is not None:
        result.val_predictions = run.best_pred.cpu()
    keep = result.status not in ("pruned", "budget")  # a stopped trial keeps no weights
    if checkpoint_path is not None and run.best_state is not None and keep:
        result.checkpoint = str(
            save_checkpoint(
                result.model, checkpoint_path, cfg=cfg, data=data, summary=result.summary()
            )
        )
    return result


class _ResidentImages:
    """The last image set placed on a device, kept there between the trials of this process
    that train on the same images (``load_data`` hands a worker's trials one ``ImageData``):
    it is uploaded once per worker, not once per trial."""

    def __init__(self) -> None:
        self.key: tuple[Any, Any, torch.device] | None = None
        self.images: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, data: ImageData, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        if self.key is None:
            return None
        train_ref, val_ref, on = self.key
        if train_ref() is data.x_train and val_ref() is data.x_val and on == device:
            return self.images
        return None

    def put(self, data: ImageData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self.clear()
        images = _to_device(data.x_train, device), _to_device(data.x_val, device)
        self.key = (weakref.ref(data.x_train), weakref.ref(data.x_val), device)
        self.images = images
        return images

    def clear(self) -> None:
        self.key = self.images = None


_RESIDENT = _ResidentImages()


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device)


class _Run:
    """One training run's pieces (model, optimizer, schedule, EMA, data on the device) and its
    best state so far; the epoch loop above calls them."""

    def __init__(
        self, cfg: TrainConfig, data: ImageData, *, micro_batch: int, faults: _faults.Faults | None
    ) -> None:
        self.cfg, self.micro = cfg, micro_batch
        self.device = device = select_device(cfg.train.device)
        configure(device)  # CUDA: this process's memory share, cuDNN autotuning, TF32
        self.model = build_model(cfg, data, device)
        self.dtype = next(self.model.parameters()).dtype  # float32 (float64 in exactness tests)
        fmt = torch.channels_last if cfg.train.channels_last and device.type != "mps" else None
        self.fmt = fmt or torch.contiguous_format
        self.batch = cfg.data.batch_size * cfg.train.accum_steps  # images per optimizer step
        n = len(data.x_train) * cfg.data.epoch_repeats  # images an epoch trains on
        self.steps_per_epoch = max(1, n // self.batch)  # the ragged last batch is dropped
        # images: the whole uint8 set on the device when it fits, else in host memory with
        # each batch gathered and copied over ahead of its step; labels always on the device
        self.placement_oom = False
        self.x_train, self.x_val = self._place_images(data)
        self.host = None
        if self.data_on == "host":
            self.host = HostBatches(self.x_train, device, self.batch)
        self.y_train, self.y_val = data.y_train.to(device), data.y_val.to(device)
        self.mean = torch.tensor(data.mean, device=device, dtype=self.dtype).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device, dtype=self.dtype).view(1, -1, 1, 1)
        self.aug = _augment.make_augment(
            cfg.data.augment, image_size=cfg.data.image_size, **cfg.data.augment_settings()
        )
        self.mixing = cfg.data.cutmix > 0 or cfg.data.mixup > 0
        # bf16 from compute capability 8.0, fp16 with loss scaling below; None off CUDA
        self.amp_dtype = amp_dtype(device) if cfg.train.amp else None
        self.amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)  # order, aug

        self.criterion = create_loss(cfg.loss)
        # the trainable parameters, in weight-decay groups as optim.decay_norm_bias says
        self.optimizer = create_optimizer(self.model, cfg.optim)
        self.scheduler = create_scheduler(
            self.optimizer, cfg.sched, epochs=cfg.train.epochs, steps_per_epoch=self.steps_per_epoch
        )
        self.ema = (
            ModelEmaV3(self.model, decay=cfg.train.ema_decay) if cfg.train.ema_decay else None
        )
        if cfg.train.compile:  # in place, after the EMA's copy: state-dict keys stay the same
            self.model.compile()
        self.step = make_step(
            self.model, self.optimizer, self.criterion, grad_clip=cfg.train.grad_clip,
            amp=self.amp, amp_dtype=self.amp_dtype or torch.bfloat16, scaler=self.scaler,
            mixing=self.mixing,
        )  # fmt: skip
        if faults is not None:  # tests only: the step with fault points around it
            self.step = _faults.wrap_step(self.step, faults, steps_per_epoch=self.steps_per_epoch)

        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_pred: torch.Tensor | None = None
        # the best epoch's score: the monitored metric, negated where lower is better
        self.sign = 1.0 if MONITORS[cfg.train.monitor] == "maximize" else -1.0
        self.best_acc, self.best_epoch, self.since_best = -math.inf, -1, 0
        self.resumed_seconds = 0.0

    def _place_images(self, data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
        """(training, validation) images where they live while training; sets ``data_on``."""
        device = self.device
        if device.type == "cpu":  # its own host: no copy (host is forced only by tests)
            self.data_on = "host" if self.cfg.data.device_cache == "host" else "device"
            return data.x_train, data.x_val
        resident = _RESIDENT.get(data, device)
        if resident is None:
            _RESIDENT.clear()  # another set's images: their memory counts as free below
        needed = 0 if resident is not None else data.x_train.nbytes + data.x_val.nbytes
        self.data_on = data_placement(
            self.cfg.data.device_cache, device=device, needed=needed, free=free_bytes(device)
        )
        if self.data_on == "device":
            try:
                return resident or _RESIDENT.put(data, device)
            except _faults.out_of_memory_error():
                self.placement_oom = True
            _RESIDENT.clear()
            _free_memory()  # outside the except block, whose traceback held the copies
            self.data_on = "host"
        _RESIDENT.clear()  # nothing of ours left on the device for a trial that needs it all
        return data.x_train, data.x_val

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model  # timm evaluates the EMA

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def prepare(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 images (on the device or the host) -> normalised floats on the device, in the
        model's dtype and memory format."""
        return self.normalize(xb.to(self.device, non_blocking=True).to(self.dtype) / 255.0)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        return ((xb - self.mean) / self.std).contiguous(memory_format=self.fmt)

    def batches(self) -> Iterator[Batch]:
        """This epoch's batches in a fresh seeded order, augmented and mixed on the device.
        Each is a whole optimizer step's images, so its randomness does not depend on how the
        step is split into micro-batches."""
        n = len(self.y_train)
        # data.epoch_repeats passes over the set, each shuffled (and augmented) afresh
        perm = torch.cat(
            [
                torch.randperm(n, device=self.device, generator=self.gen)
                for _ in range(self.cfg.data.epoch_repeats)
            ]
        )
        for xb, yb in self.gather(perm):
            xb = xb.to(self.dtype) / 255.0  # a new tensor: a host buffer is free again
            if self.aug is not None:
                xb = self.aug(xb, self.gen)
            y_mix, lam = yb, 1.0
            if self.mixing:
                xb, yb, y_mix, lam = _augment.mix_batch(
                    xb,
                    yb,
                    cutmix=self.cfg.data.cutmix,
                    mixup=self.cfg.data.mixup,
                    generator=self.gen,
                )
            yield Batch(self.normalize(xb), yb, y_mix, lam)

    def gather(self, perm: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) of each step, on the device, in ``perm``'s order."""
        b, steps = self.batch, self.steps_per_epoch
        if self.host is None:  # index the resident set: no copies, no sync
            for i in range(steps):
                idx = perm[i * b : (i + 1) * b]
                yield self.x_train[idx], self.y_train[idx]
            return
        # Host memory: a background thread gathers each step's images into reused (pinned)
        # buffers and each is copied over on a side stream one step ahead, overlapping the
        # step before it (trainer.data.prefetch). The order is the device path's (one read of
        # the permutation per epoch), so the run is the same as with the set on the device.
        host_perm = perm.cpu()
        for i, xb in enumerate(self.host.epoch(host_perm, steps)):
            yield xb, self.y_train[perm[i * b : (i + 1) * b]]

    def train_epoch(
        self, epoch: int, on_step: StepHook | None, *, done: int
    ) -> tuple[float, float, tuple[str, str] | None]:
        """(train_loss, train_acc, None), or (nan, nan, (status, reason)) when it stopped.

        Losses and accuracy stay on the device; the host reads them every ``CHECK_EVERY``
        steps (a non-finite loss stops the run within that many steps) and at the epoch end.
        """
        self.model.train()
        steps = self.steps_per_epoch
        step_loss = torch.zeros(steps, device=self.device)  # mean loss of each step
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for i, batch in enumerate(self.batches()):
            t = (epoch - 1) * steps + i  # optimizer steps since the start of the run
            self.scheduler.step_update(t)
            loss_sum, right = self.step(batch.split(self.micro))
            if self.ema is not None:
                self.ema.update(self.model, step=t + 1)  # the first update copies the weights
            step_loss[i] = loss_sum / len(batch.y)
            correct += right
            seen += len(batch.y)
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
                bad = _first_nonfinite(step_loss[: i + 1])
                if bad is not None:
                    reason = f"loss became {bad[1]} at epoch {epoch}, step {bad[0]}"
                    return math.nan, math.nan, ("nonfinite_loss", reason)
            if on_step is not None and on_step(epoch, i + 1, steps, seen):
                reason = (
                    f"budget: the wall-clock budget ran out in epoch {epoch} (step {i + 1} "
                    f"of {steps}); {done} finished epoch{'s' * (done != 1)} kept"
                )  # this epoch is dropped, the finished ones kept
                return math.nan, math.nan, ("budget", reason)
        return step_loss.mean().item(), (correct / seen).item(), None

    def keep_if_best(
        self, epoch: int, metrics: dict[str, float], predictions: list[torch.Tensor]
    ) -> None:
        score = self.sign * metrics[self.cfg.train.monitor]  # NaN is never the best
        if score > self.best_acc:
            self.best_acc, self.since_best, self.best_epoch = score, 0, epoch
            self.best_state = {
                k: v.detach().clone() for k, v in self.eval_model.state_dict().items()
            }
            self.best_pred = torch.cat(predictions) if predictions else None
        else:
            self.since_best += 1

    def best_model(self) -> nn.Module:
        """The training model with the best evaluated weights (the EMA's where on), in eval mode."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.model.eval()

    def resume(self, state: TrainState, result: TrainResult, reporter: Reporter) -> int:
        """Load a killed run's state; replay its epochs to the reporter; the next epoch."""
        try:
            restore(
                state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                generator=self.gen, ema=self.eval_model if self.ema is not None else None,
                scaler=self.scaler,
            )  # fmt: skip
        except ValueError as exc:
            raise _ResumeFailed(str(exc)) from None
        result.history = [dict(h) for h in state.history]
        self.best_state, self.best_acc, self.since_best = (
            state.best,
            state.best_acc,
            state.since_best,
        )
        self.best_epoch = state.best_epoch
        self.resumed_seconds = sum(h.get("seconds", 0.0) for h in result.history)
        for metrics in result.history:  # a new trial learns the epochs it inherits
            reporter.report(int(metrics["epoch"]), metrics)
        return state.epoch + 1

    def save(
        self, path: str | Path, *, epoch: int, history: list[dict[str, float]], writer: _StateWriter
    ) -> None:
        """Copy the run's state to the host now (between two steps) and hand it to ``writer``."""
        snapshot = snapshot_state(
            config=self.cfg.to_flat(), epoch=epoch, history=[dict(h) for h in history],
            best_epoch=self.best_epoch, best_acc=self.best_acc, since_best=self.since_best,
            model=self.model, best_state=self.best_state, optimizer=self.optimizer,
            scheduler=self.scheduler, generator=self.gen,
            ema=self.eval_model if self.ema is not None else None, scaler=self.scaler,
        )  # fmt: skip
        writer.write(path, snapshot)


def data_placement(setting: str, *, device: torch.device, needed: int, free: int | None) -> str:
    """Where the decoded images live while training: ``"device"`` or ``"host"``.

    ``auto`` keeps them on the device when they take at most ``DEVICE_CACHE_SHARE`` of the
    memory this process may still allocate there (``free``: ``trainer.device.free_bytes``,
    within its GPU share; the rest is for activations), else in host memory; a CPU is its own
    host.
    """
    if setting != "auto":
        return setting
    if device.type == "cpu" or free is None:
        return "device"
    return "device" if needed <= DEVICE_CACHE_SHARE * free else "host"


def _first_nonfinite(step_loss: torch.Tensor) -> tuple[int, float] | None:
    """(1-based step, loss) of the first non-finite step loss, or None: one host read."""
    finite = torch.isfinite(step_loss)
    if bool(finite.all()):
        return None
    i = int((~finite).nonzero()[0, 0])
    return i + 1, float(step_loss[i])


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    amp: bool = False,
    amp_dtype: torch.dtype | None = torch.bfloat16,
    batch: int = EVAL_BATCH,
    predictions: list[torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over a labelled uint8 image set, in large batches; the sums stay
    on the device until the end (one host read). ``predictions``: a list that receives each
    batch's predicted classes (device tensors)."""
    model.eval()
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for i in range(0, len(x), batch):
        xb, yb = prepare(x[i : i + batch]), y[i : i + batch]
        with torch.autocast(xb.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp):
            logits = model(xb)
        logits = logits.float() if amp else logits
        loss_sum += criterion(logits, yb) * len(yb)
        pred = logits.argmax(1)
        correct += (pred == yb).sum()
        if predictions is not None:
            predictions.append(pred)
    return loss_sum.item() / len(x), correct.item() / len(x)
