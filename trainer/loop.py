"""The training loop: readable top to bottom, hooks instead of exceptions.

``train(cfg, reporter=...)`` trains one configuration and returns a ``TrainResult``. After
every epoch it calls ``reporter.report(epoch, metrics)`` and then asks
``reporter.should_stop()`` (pruning is the caller's decision, not an exception from inside).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer import augment as _augment
from trainer.checkpoint import load_pretrained, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import ImageData, load_data
from trainer.losses import create_loss
from trainer.models import Classifier, create_model
from trainer.optim import create_optimizer

EVAL_BATCH = 512


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...


class NullReporter:
    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class TrainResult:
    status: str  # complete | early_stopped | pruned | nonfinite_loss
    reason: str
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = -1  # 1-based epoch with the highest val_acc; -1 when none finished
    train_seconds: float = 0.0  # wall time of the epochs (data loading excluded)
    setup_seconds: float = 0.0  # data ready + model built
    checkpoint: str | None = None
    model: nn.Module | None = field(default=None, repr=False)  # best weights, in eval mode

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


def train(
    cfg: TrainConfig,
    *,
    reporter: Reporter | None = None,
    checkpoint_path: str | Path | None = None,
    data: ImageData | None = None,
) -> TrainResult:
    reporter = reporter or NullReporter()
    t_setup = time.perf_counter()
    device = select_device(cfg.train.device)
    data = data or load_data(cfg.data)
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
    bs, accum = cfg.data.batch_size, cfg.train.accum_steps
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
    result.setup_seconds = time.perf_counter() - t_setup
    t_train = time.perf_counter()

    for epoch in range(1, cfg.train.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bad_loss = None
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
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

        if bad_loss is not None:
            result.status = "nonfinite_loss"
            result.reason = f"loss became {bad_loss} at epoch {epoch}, step {step + 1}"
            break

        val_loss, val_acc = evaluate(model, x_val, y_val, criterion, prepare, amp=amp)
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

    result.train_seconds = time.perf_counter() - t_train
    if best_state is not None:
        model.load_state_dict(best_state)  # early stopping keeps the best state (seed 004)
    model.eval()
    result.model = model
    if checkpoint_path is not None and best_state is not None and result.status != "pruned":
        result.checkpoint = str(
            save_checkpoint(model, checkpoint_path, cfg=cfg, data=data, summary=result.summary())
        )
    return result


@torch.inference_mode()
def evaluate(model, x, y, criterion, prepare, *, amp: bool = False) -> tuple[float, float]:
    """Mean loss and accuracy over a labelled tensor set, in large batches."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = prepare(x[i : i + EVAL_BATCH]), y[i : i + EVAL_BATCH]
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
