"""The training loop: readable top to bottom, hooks instead of exceptions.

``train(cfg, reporter=...)`` trains one configuration and returns a ``TrainResult``. After
every epoch it calls ``reporter.report(epoch, metrics)`` and then asks
``reporter.should_stop()`` (pruning is the caller's decision, not an exception from inside).
A reporter may also have ``step(epoch, step, steps_per_epoch, images) -> bool``, called after
every training step (progress bars; a caller's deadline): True stops the run at once, with
status ``budget`` and the finished epochs kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer import _faults
from trainer import augment as _augment
from trainer.checkpoint import load_pretrained, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import ImageData, load_data
from trainer.losses import create_loss
from trainer.models import Classifier, create_model
from trainer.optim import create_optimizer
from trainer.resume import TrainState, load_state, restore, save_state

EVAL_BATCH = 512
MIN_MICRO_BATCH = 2  # out of memory below this micro-batch: the trial ends with status "oom"


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
    best_epoch: int = -1  # 1-based epoch with the highest val_acc; -1 when none finished
    train_seconds: float = 0.0  # wall time of the epochs (data loading excluded)
    setup_seconds: float = 0.0  # data ready + model built
    checkpoint: str | None = None
    model: nn.Module | None = field(default=None, repr=False)  # best weights, in eval mode
    # what the run had to change or reuse: oom_retries, micro_batch, accum_steps,
    # effective_batch (out of memory), resumed_from_epoch / resume_skipped (a resumed run)
    adjustments: dict[str, Any] = field(default_factory=dict)

    @property
    def best_val_acc(self) -> float:
        return self.history[self.best_epoch - 1]["val_acc"] if self.best_epoch > 0 else math.nan

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
        }


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(cfg: TrainConfig, data: ImageData, device: torch.device) -> Classifier:
    """Seeded model with pretrained weights and freezing applied. Equal seeds and configs give
    identical initial weights, so trials are paired comparisons (seed 004)."""
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
    (weights, optimizer, scheduler, RNG, history) is written there, and removed when the run
    ends; ``resume_from`` continues a run from such a file (a killed trial's), replaying its
    epochs to the reporter. A file that is missing, damaged, or for another configuration is
    noted in ``adjustments["resume_skipped"]`` and the run starts from epoch 1.

    Out of memory (a CUDA OOM): the micro-batch is halved and gradient accumulation doubled,
    so the effective batch stays, and the run continues from its last finished epoch (or
    restarts); ``adjustments`` records it. Below ``MIN_MICRO_BATCH`` the result has status
    ``oom``.
    """
    reporter = reporter or NullReporter()
    on_step: StepHook | None = getattr(reporter, "step", None)  # optional: looked up once
    reporter = _ReportOnce(reporter)
    fault = _faults.faults()
    oom_error = _faults.out_of_memory_error()
    data = data or load_data(cfg.data)
    notes: dict[str, Any] = {}
    resume = _read_resume(resume_from, cfg, notes)
    if resume is not None:
        notes["resumed_from_epoch"] = resume.epoch
    micro, accum, ooms = cfg.data.batch_size, cfg.train.accum_steps, 0
    while True:
        try:
            result = _train_once(
                cfg, reporter=reporter, checkpoint_path=checkpoint_path, data=data,
                micro_batch=micro, accum_steps=accum, eval_batch=max(1, EVAL_BATCH >> ooms),
                resume=resume, last_checkpoint_path=last_checkpoint_path, fault=fault,
                on_step=on_step,
            )  # fmt: skip
            break
        except _ResumeFailed as exc:
            notes.pop("resumed_from_epoch", None)
            notes["resume_skipped"] = str(exc)
            resume = None
            continue
        except oom_error as exc:
            error = str(exc).splitlines()[0] if str(exc) else "out of memory"
        _free_memory()
        ooms += 1
        if (micro + 1) // 2 < MIN_MICRO_BATCH or micro == 1:
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
        micro, accum = (micro + 1) // 2, accum * 2
        resume = None
        if last_checkpoint_path is not None:  # continue from the last finished epoch
            resume = _read_resume(last_checkpoint_path, cfg, {})
    if ooms:
        notes.update(
            oom_retries=ooms, micro_batch=micro, accum_steps=accum, effective_batch=micro * accum
        )
    result.adjustments.update(notes)
    if last_checkpoint_path is not None:
        Path(last_checkpoint_path).unlink(missing_ok=True)  # only a killed run needs it
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
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train_once(
    cfg: TrainConfig,
    *,
    reporter: Reporter,
    checkpoint_path: str | Path | None,
    data: ImageData,
    micro_batch: int,
    accum_steps: int,
    eval_batch: int,
    resume: TrainState | None,
    last_checkpoint_path: str | Path | None,
    fault: dict[str, float],
    on_step: StepHook | None = None,
) -> TrainResult:
    t_setup = time.perf_counter()
    device = select_device(cfg.train.device)
    model = build_model(cfg, data, device)
    fmt = torch.channels_last if cfg.train.channels_last and device.type != "mps" else None

    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)

    def prepare(xb: torch.Tensor) -> torch.Tensor:
        xb = (xb.float() / 255.0 - mean) / std  # uint8 -> normalised float
        return xb.contiguous(memory_format=fmt) if fmt is not None else xb

    criterion = create_loss(cfg.loss)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(trainable, cfg.optim)
    scheduler = _make_scheduler(optimizer, cfg)
    sam = getattr(optimizer, "is_sam", False)
    aug = _augment.make_augment(cfg.data.augment, image_size=cfg.data.image_size)
    mixing = cfg.data.cutmix > 0 or cfg.data.mixup > 0
    # bf16 autocast on CUDA: no loss scaling needed, ~2x throughput on tensor cores.
    amp = cfg.train.amp and device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)  # batch order, aug
    bs, accum = micro_batch, accum_steps  # micro-batch; an optimizer step sees bs * accum
    n = len(x_train)
    steps_per_epoch = max(1, n // bs) if n >= bs else 1  # drop the ragged last batch

    def forward_loss(xb, ya, yb, lam):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        logits = logits.float()
        loss = (
            criterion(logits, ya)
            if lam == 1.0
            else (lam * criterion(logits, ya) + (1 - lam) * criterion(logits, yb))
        )
        return logits, loss

    result = TrainResult(status="complete", reason=f"ran all {cfg.train.epochs} epochs")
    best_state: dict[str, torch.Tensor] | None = None
    best_acc, since_best = -1.0, 0
    first_epoch, resumed_seconds = 1, 0.0
    if resume is not None:
        try:
            restore(resume, model=model, optimizer=optimizer, scheduler=scheduler, generator=gen)
        except ValueError as exc:
            raise _ResumeFailed(str(exc)) from None
        result.history = [dict(h) for h in resume.history]
        best_state, best_acc, since_best = resume.best, resume.best_acc, resume.since_best
        result.best_epoch, first_epoch = resume.best_epoch, resume.epoch + 1
        resumed_seconds = sum(h.get("seconds", 0.0) for h in result.history)
        for metrics in result.history:  # a new trial learns the epochs it inherits
            reporter.report(int(metrics["epoch"]), metrics)
    result.setup_seconds = time.perf_counter() - t_setup
    t_train = time.perf_counter()
    if resume is not None and reporter.should_stop():
        result.status, result.reason = "pruned", f"pruned after epoch {resume.epoch}"
        first_epoch = cfg.train.epochs + 1  # no epoch left to run

    for epoch in range(first_epoch, cfg.train.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = stopped_at = 0
        bad_loss = None
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            if fault:
                _faults.check_batch(fault, len(idx))
                if step == min(1, steps_per_epoch - 1) and fault.get("epoch_sleep"):
                    time.sleep(fault["epoch_sleep"])  # a test kills or pauses us here
            xb, yb = x_train[idx].float() / 255.0, y_train[idx]
            if aug is not None:
                xb = aug(xb, gen)
            ya, yb2, lam = yb, yb, 1.0
            if mixing:
                xb, ya, yb2, lam = _augment.mix_batch(
                    xb, yb, cutmix=cfg.data.cutmix, mixup=cfg.data.mixup, generator=gen
                )
            xb = ((xb - mean) / std).contiguous(memory_format=fmt or torch.contiguous_format)
            logits, loss = forward_loss(xb, ya, yb2, lam)
            if not math.isfinite(loss.item()):  # stop on the first bad batch
                bad_loss = loss.item()
                break
            (loss / accum).backward()
            if (step + 1) % accum == 0 or step + 1 == steps_per_epoch:
                if sam:  # SAM: perturb, recompute the loss there, step from the original point
                    _clip(trainable, cfg.train.grad_clip)
                    optimizer.first_step()
                    optimizer.zero_grad(set_to_none=True)
                    forward_loss(xb, ya, yb2, lam)[1].backward()
                    optimizer.second_step()
                else:
                    _clip(trainable, cfg.train.grad_clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == ya).sum()
            seen += len(idx)
            if on_step is not None and on_step(epoch, step + 1, steps_per_epoch, seen):
                stopped_at = step + 1
                break

        if stopped_at:  # the caller's deadline: this epoch is dropped, finished ones kept
            done = len(result.history)
            result.status = "budget"
            result.reason = (
                f"budget: the wall-clock budget ran out in epoch {epoch} (step {stopped_at} "
                f"of {steps_per_epoch}); {done} finished epoch{'s' * (done != 1)} kept"
            )
            break
        if bad_loss is not None:
            result.status = "nonfinite_loss"
            result.reason = f"loss became {bad_loss} at epoch {epoch}, step {step + 1}"
            break

        val_loss, val_acc = evaluate(
            model, x_val, y_val, criterion, prepare, amp=amp, batch=eval_batch
        )
        metrics = {
            "epoch": epoch,
            "train_loss": (loss_sum / seen).item(),
            "train_acc": (correct / seen).item(),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t_epoch,
        }
        result.history.append(metrics)
        if val_acc > best_acc:
            best_acc, since_best, result.best_epoch = val_acc, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if scheduler is not None:
            scheduler.step(val_acc) if cfg.sched.name == "plateau" else scheduler.step()

        reporter.report(epoch, metrics)
        if reporter.should_stop():
            result.status, result.reason = "pruned", f"pruned after epoch {epoch}"
            break
        if cfg.train.patience and since_best >= cfg.train.patience and epoch < cfg.train.epochs:
            result.status = "early_stopped"
            result.reason = (
                f"no val_acc gain for {since_best} epochs; best epoch {result.best_epoch}"
            )
            break
        if last_checkpoint_path is not None and epoch < cfg.train.epochs:
            save_state(
                last_checkpoint_path, config=cfg.to_flat(), epoch=epoch, history=result.history,
                best_epoch=result.best_epoch, best_acc=best_acc, since_best=since_best,
                model=model, best_state=best_state, optimizer=optimizer, scheduler=scheduler,
                generator=gen,
            )  # fmt: skip

    result.train_seconds = time.perf_counter() - t_train + resumed_seconds
    if best_state is not None:
        model.load_state_dict(best_state)  # early stopping keeps the best state (seed 004)
    model.eval()
    result.model = model
    keep = result.status not in ("pruned", "budget")  # a stopped trial keeps no weights
    if checkpoint_path is not None and best_state is not None and keep:
        result.checkpoint = str(
            save_checkpoint(model, checkpoint_path, cfg=cfg, data=data, summary=result.summary())
        )
    return result


@torch.inference_mode()
def evaluate(
    model, x, y, criterion, prepare, *, amp: bool = False, batch: int = EVAL_BATCH
) -> tuple[float, float]:
    """Mean loss and accuracy over a labelled tensor set, in large batches."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        xb, yb = prepare(x[i : i + batch]), y[i : i + batch]
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        logits = logits.float()
        loss_sum += criterion(logits, yb).item() * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(x), correct / len(x)


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    # SAM steps through its base optimizer (same param groups): schedule that one.
    optimizer = getattr(optimizer, "base_optimizer", optimizer)
    if cfg.sched.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.train.epochs, eta_min=min(cfg.sched.min_lr, cfg.optim.lr)
        )
    if cfg.sched.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.sched.factor, patience=cfg.sched.patience
        )
    return None
