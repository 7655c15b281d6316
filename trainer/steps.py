"""One optimisation step over the micro-batches of one batch: plain, or SAM's two passes.

The batch's loss is the mean over all its images, so each micro-batch's mean loss is weighted
by its share of the images (``len(micro) / len(batch)``): the accumulated gradient is the
full batch's gradient however the batch is split (by ``train.accum_steps``, or halved after an
out-of-memory error). SAM climbs along that whole-batch gradient, and its second pass
recomputes every micro-batch at the perturbed weights. Gradient clipping, where set, applies
to the gradient the optimizer then steps with. Returns device tensors only (no host sync).

Mixed precision: autocast in ``amp_dtype`` (bf16 from compute capability 8.0). fp16 (V100, T4)
needs a ``torch.amp.GradScaler``: every micro-batch's loss is scaled before its backward pass,
the gradient is unscaled before clipping and before SAM's ascent step, and a step whose
gradient is not finite is skipped (the scaler then lowers its scale). With a fused optimizer
(Adam, AdamW, SGD on CUDA) the scaler decides on the device; otherwise it reads one flag per step.

Halving the micro-batch after an out-of-memory error keeps the update the same for models
without batch statistics. BatchNorm normalises each micro-batch with that micro-batch's
mean and variance, so there the gradient changes (slightly; more for very small micro-batches)
and so do the running statistics, which are updated once per micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Batch:
    x: torch.Tensor  # normalised images [B, C, H, W], on the training device
    y: torch.Tensor  # labels [B]
    y_mix: torch.Tensor  # the second labels of a mixed batch (CutMix/MixUp), else y
    lam: torch.Tensor | float = 1.0  # loss = lam * loss(y) + (1 - lam) * loss(y_mix)

    def split(self, size: int) -> list[Batch]:
        """Micro-batches of at most ``size`` images (views, no copy)."""
        return [
            Batch(self.x[i : i + size], self.y[i : i + size], self.y_mix[i : i + size], self.lam)
            for i in range(0, len(self.y), size)
        ]


# step(micro_batches) -> (summed loss over the batch's images, correct predictions), on device
StepFn = Callable[[list[Batch]], tuple[torch.Tensor, torch.Tensor]]

MIN_MICRO_BATCH = 2  # out of memory below this micro-batch: the configuration does not fit


def halved(micro: int) -> int | None:
    """The micro-batch to try after ``micro`` ran out of memory, or None below
    ``MIN_MICRO_BATCH`` (the training loop and the speed probe halve alike)."""
    if micro == 1 or (micro + 1) // 2 < MIN_MICRO_BATCH:
        return None
    return (micro + 1) // 2


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    *,
    grad_clip: float = 0.0,
    amp: bool = False,
    mixing: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    scaler: torch.amp.GradScaler | None = None,
) -> StepFn:
    """The optimisation step for ``optimizer`` (SAM when it has ``is_sam``); ``amp``:
    autocast in ``amp_dtype``; ``scaler``: loss scaling for fp16 (see the module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    sam = getattr(optimizer, "is_sam", False)
    device_type = next(model.parameters()).device.type

    def loss_of(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # bf16 needs no loss scaling and runs ~2x faster than fp32 on tensor cores
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp):
            logits = model(b.x)
        if amp:
            logits = logits.float()
        loss = criterion(logits, b.y)
        if mixing:  # lam is a device tensor; lam = 1 leaves loss(y) unchanged
            loss = b.lam * loss + (1 - b.lam) * criterion(logits, b.y_mix)
        return logits, loss

    def accumulate(micro: list[Batch], total: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum = torch.zeros((), device=micro[0].y.device)
        correct = torch.zeros((), device=micro[0].y.device, dtype=torch.long)
        for b in micro:
            logits, loss = loss_of(b)
            share = loss * (len(b.y) / total)  # the batch mean, whatever the split
            (share if scaler is None else scaler.scale(share)).backward()
            loss_sum = loss_sum + loss.detach() * len(b.y)
            correct = correct + (logits.detach().argmax(1) == b.y).sum()
        return loss_sum, correct

    def step(micro: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        total = sum(len(b.y) for b in micro)
        loss_sum, correct = accumulate(micro, total)  # reported: the loss at the weights
        if scaler is not None:
            return scaled_step(micro, total, loss_sum, correct)
        if sam:
            # Clipping this gradient first would not change the ascent step (normalised to
            # length rho), so only the gradient that is stepped with is clipped, below.
            optimizer.first_step()
            optimizer.zero_grad(set_to_none=True)
            with _frozen_batchnorm_stats(model):  # count each batch once in the BN statistics
                accumulate(micro, total)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if sam:
            optimizer.second_step()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum, correct

    def scaled_step(
        micro: list[Batch], total: int, loss_sum: torch.Tensor, correct: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stepper = optimizer
        if sam:
            scaler.unscale_(optimizer)  # the ascent needs the true gradient
            optimizer.first_step(skip_nonfinite=True)  # no climb along an overflowed gradient
            optimizer.zero_grad(set_to_none=True)
            with _frozen_batchnorm_stats(model):
                accumulate(micro, total)
            # A second unscale per step is refused for one optimizer; the base optimizer
            # holds the same parameters and has a state of its own in the scaler.
            stepper = optimizer.base_optimizer
        if grad_clip > 0 or sam:
            scaler.unscale_(stepper)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if sam:
            optimizer.restore()  # back to the weights before the climb, then step from there
        scaler.step(stepper)  # skipped when the gradient (of either pass) is not finite
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum, correct

    return step


@contextlib.contextmanager
def _frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm still normalises with batch statistics but leaves its running ones alone."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum


__all__ = ["MIN_MICRO_BATCH", "Batch", "StepFn", "halved", "make_step"]
