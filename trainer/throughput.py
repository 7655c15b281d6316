"""What a configuration costs here: training images per second on this device.

``measure_throughput(cfg, num_classes=..., in_chans=...)`` times a few real training steps
(forward, loss, backward, optimizer step, SAM's second pass included) of ``cfg``'s backbone at
its image size and batch size, on synthetic pixels, so a caller can estimate a trial's wall
time before it trains. Plain PyTorch: deciding what to do with the figure is the caller's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trainer.config import TrainConfig
from trainer.loop import select_device
from trainer.losses import create_loss
from trainer.models import create_model
from trainer.optim import create_optimizer


@dataclass(frozen=True)
class Throughput:
    images_per_second: float
    device: str  # "cpu", "cuda:NVIDIA H100 80GB HBM3", ...
    batch_size: int
    steps: int  # timed steps (after the warm-up ones)


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
    warmup: int = 1,
    max_seconds: float = 20.0,
) -> Throughput:
    """Training images/s of ``cfg`` (backbone, image size, batch size, optimizer) here.

    ``warmup`` untimed steps come first (allocator, cuDNN autotuning); at most ``steps`` are
    timed, fewer when they pass ``max_seconds`` (a slow backbone is measured by one step).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, but got {steps=}")
    device = select_device(cfg.train.device)
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
    criterion = create_loss(cfg.loss)
    sam = getattr(optimizer, "is_sam", False)
    amp = cfg.train.amp and device.type == "cuda"
    bs, size = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(bs, in_chans, size, size, device=device)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (bs,), device=device)

    def loss_of() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        return criterion(logits.float(), y)

    def step() -> None:
        loss_of().backward()
        if sam:
            optimizer.first_step()
            optimizer.zero_grad(set_to_none=True)
            loss_of().backward()
            optimizer.second_step()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    timed, start = 0, time.perf_counter()
    while timed < steps:
        step()
        timed += 1
        sync()
        if time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    return Throughput(
        images_per_second=timed * bs / seconds,
        device=device_label(device),
        batch_size=bs,
        steps=timed,
    )
