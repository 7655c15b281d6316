"""What a configuration costs here: training images per second on this device.

``measure_throughput(cfg, num_classes=..., in_chans=...)`` times a few real training steps of
``cfg``'s backbone at its image size and batch size, on synthetic pixels, with the training
loop's own step (``trainer.steps.make_step``: forward, loss, backward, clipping, optimizer
step, SAM's second pass, mixed precision), so a caller can estimate a trial's wall time before
it trains. Out of memory, the micro-batch is halved as the training loop halves it; below the
smallest micro-batch ``ProbeOutOfMemory`` says the configuration does not fit. Plain
PyTorch: deciding what to do with the figure is the caller's.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass

import torch

from trainer import _faults
from trainer.config import TrainConfig
from trainer.device import amp_dtype, configure, select_device
from trainer.losses import create_loss
from trainer.models import create_model
from trainer.optim import create_optimizer
from trainer.steps import MIN_MICRO_BATCH, Batch, halved, make_step

GPU_WARMUP = 2  # untimed steps on a GPU: the allocator's first requests, cuDNN's autotuning


@dataclass(frozen=True)
class Throughput:
    images_per_second: float
    device: str  # "cpu", "cuda:NVIDIA H100 80GB HBM3", ...
    batch_size: int
    steps: int  # timed steps (after the warm-up ones)
    # images per forward/backward pass: below batch_size after running out of memory at the
    # whole batch (the training loop would accumulate the same way); 0: not recorded
    micro_batch: int = 0


class ProbeOutOfMemory(RuntimeError):
    """The configuration runs out of device memory even at the smallest micro-batch."""


def device_label(device: torch.device) -> str:
    """A name that tells devices apart in a shared cache (two GPU models, CPU thread counts)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{torch.get_num_threads()}t"
    return device.type


def measure_throughput(
    cfg: TrainConfig,
    *,
    num_classes: int,
    in_chans: int = 3,
    steps: int = 3,
    warmup: int | None = None,
    max_seconds: float = 20.0,
) -> Throughput:
    """Training images/s of ``cfg`` (backbone, image size, batch size, optimizer) here.

    ``warmup`` untimed steps come first (default: 2 on a GPU, for the allocator and cuDNN's
    autotuning, 1 elsewhere); at most ``steps`` are timed, fewer when they pass ``max_seconds`` (a slow backbone is measured by one step). On
    a GPU the steps are timed with CUDA events and the host waits for the device once.
    Raises ``ProbeOutOfMemory`` when even ``MIN_MICRO_BATCH`` images do not fit.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, but got {steps=}")
    if warmup is not None and warmup < 0:
        raise ValueError(f"warmup must be >= 0, but got {warmup=}")
    device = select_device(cfg.train.device)
    if warmup is None:
        warmup = GPU_WARMUP if device.type == "cuda" else 1
    configure(device)
    oom_error = _faults.out_of_memory_error()
    micro = cfg.data.batch_size
    while True:
        try:
            return _measure(cfg, device, micro, num_classes, in_chans, steps, warmup, max_seconds)
        except oom_error as exc:
            error = (str(exc).splitlines() or ["out of memory"])[0]
        gc.collect()  # outside the except block, whose traceback held the probe's tensors
        if device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = halved(micro)
        if smaller is None:
            accum = -(-cfg.data.batch_size // micro)
            raise ProbeOutOfMemory(
                f"out of memory at micro-batch {micro} x {accum} accumulation steps, the "
                f"smallest allowed is {MIN_MICRO_BATCH} ({error})"
            )
        micro = smaller


def _measure(
    cfg: TrainConfig,
    device: torch.device,
    micro: int,
    num_classes: int,
    in_chans: int,
    steps: int,
    warmup: int,
    max_seconds: float,
) -> Throughput:
    torch.manual_seed(0)
    model = create_model(
        cfg.model, num_classes=num_classes, in_chans=in_chans, image_size=cfg.data.image_size
    ).to(device)
    model.train()
    fmt = torch.channels_last if cfg.train.channels_last and device.type != "mps" else None
    if fmt is not None:
        model = model.to(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(params, cfg.optim)
    dtype = amp_dtype(device) if cfg.train.amp else None
    step = make_step(
        model, optimizer, create_loss(cfg.loss), grad_clip=cfg.train.grad_clip,
        amp=dtype is not None, amp_dtype=dtype or torch.bfloat16,
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        mixing=cfg.data.cutmix > 0 or cfg.data.mixup > 0,
    )  # fmt: skip
    faults = _faults.installed()
    if faults is not None:  # tests: oom_above makes a GPU's out-of-memory error on a CPU
        step = _faults.wrap_step(
            step, dataclasses.replace(faults, epoch_sleep=0.0), steps_per_epoch=1
        )
    bs, size = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(bs, in_chans, size, size, device=device)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (bs,), device=device)
    micro_batches = Batch(x, y, y).split(micro)

    for _ in range(warmup):
        step(micro_batches)
    cuda = device.type == "cuda"
    if cuda:  # the device's own clock: no host wait between the timed steps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    timed, t0 = 0, time.perf_counter()
    while timed < steps:
        step(micro_batches)
        timed += 1
        # the host runs at most a launch queue ahead of a GPU, so its clock bounds the time too
        if time.perf_counter() - t0 > max_seconds:
            break
    if cuda:
        end.record()
        end.synchronize()  # the one wait for the device
        seconds = start.elapsed_time(end) / 1000.0
    else:
        seconds = time.perf_counter() - t0
    return Throughput(
        images_per_second=timed * bs / seconds,
        device=device_label(device),
        batch_size=bs,
        steps=timed,
        micro_batch=micro,
    )


__all__ = ["ProbeOutOfMemory", "Throughput", "device_label", "measure_throughput"]
