"""How close ``trainer.train`` comes to a bare training loop of the same model.

For each model: images/s of a whole training epoch through ``trainer.train`` (data on the
device path or forced to the host path, ``light`` augmentation, Adam; evaluation excluded: the
epoch is timed from the step hook, after a warm-up step), against a bare loop of the same
model (``trainer.create_model``: the same timm backbone and head) doing forward, backward and
Adam on random tensors already in memory, with the same batch size, threads, memory format and
precision, and on CUDA the trainer's own speed settings (bf16 autocast, fused Adam, cuDNN
autotuning, TF32). Prints both and their ratio; on CUDA also MFU against ``--peak-tflops``.
A model may carry its own image size: ``resnet50@224``. ``--out FILE`` appends the lines to a
Markdown table (``benchmarks/gpu_check.py`` collects it).

    .venv/bin/python benchmarks/bench_trainer.py                        # CPU: resnet18, seed_cnn
    python3 benchmarks/bench_trainer.py --device cuda --models resnet50@224,resnet18@224 \\
        --batch-size 256 --images 8192 --host-path                       # GPU, bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import trainer  # noqa: E402
from trainer import ImageData, TrainConfig  # noqa: E402

CLASSES = 10


def synthetic_data(n: int, size: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % CLASSES
    n_val = max(CLASSES, n // 10)
    names = [str(i) for i in range(CLASSES)]
    return ImageData(x, y, x[:n_val], y[:n_val], names, mean=(0.5,) * 3, std=(0.25,) * 3)


def config(args: argparse.Namespace, model: str, cache: str) -> TrainConfig:
    return TrainConfig.from_flat({
        "data.image_size": args.image_size, "data.batch_size": args.batch_size,
        "train.compile": args.compile,
        "data.augment": "light", "data.device_cache": cache, "model.backbone": model,
        "optim.name": "adam", "train.epochs": 1, "train.patience": 0, "train.device": args.device,
        "train.amp": args.device == "cuda", "sched.name": "none",
    })  # fmt: skip


class StepClock:
    """Times the steps after the first (warm-up) one; syncs CUDA only here, in the benchmark."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.t0 = self.t1 = 0.0
        self.images = 0

    def report(self, epoch: int, metrics: dict) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def step(self, epoch: int, step: int, steps: int, images: int) -> bool:
        if step == 1 or step == steps:
            if self.cuda:
                torch.cuda.synchronize()
            if step == 1:
                self.t0, self.first = time.perf_counter(), images
            else:
                self.t1, self.images = time.perf_counter(), images - self.first
        return False


def trainer_images_per_s(
    args: argparse.Namespace, model: str, data: ImageData, cache: str
) -> float:
    clock = StepClock(args.device)
    trainer.train(config(args, model, cache), reporter=clock, data=data)
    return clock.images / (clock.t1 - clock.t0)


def bare_images_per_s(args: argparse.Namespace, model_name: str, steps: int) -> tuple[float, float]:
    """(images/s, training FLOPs per image) of forward/backward/Adam on resident tensors."""
    cfg = config(args, model_name, "device")
    device = torch.device(args.device)
    trainer.device.configure(device)  # cuDNN autotuning and TF32, as trainer.train sets them
    torch.manual_seed(0)
    model = trainer.create_model(cfg.model, num_classes=CLASSES, image_size=args.image_size)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if cuda else {}))
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    dtype = trainer.device.amp_dtype(device)
    amp = dtype is not None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=amp):
            logits = model(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        step()  # also the warm-up step
    sync = torch.cuda.synchronize if amp else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * args.batch_size / (
        time.perf_counter() - t0
    ), flops.get_total_flops() / args.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,seed_cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=2048, help="training images (one epoch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--host-path", action="store_true", help="also time data.device_cache=host")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    p.add_argument("--compile", action="store_true", help="train.compile = true in the trainer")
    p.add_argument("--out", help="append the results as Markdown table rows to this file")
    args = p.parse_args()
    steps = args.images // args.batch_size - 1
    where = args.device
    if args.device == "cuda":
        where = f"cuda ({torch.cuda.get_device_name()})"
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {where}, batch {args.batch_size}, "
          f"{args.images} images")  # fmt: skip
    rows = []
    default_size = args.image_size
    for item in args.models.split(","):
        name, _, size = item.partition("@")
        args.image_size = int(size) if size else default_size
        data = synthetic_data(args.images, args.image_size)
        bare, flops = bare_images_per_s(args, name, steps)
        ours = trainer_images_per_s(args, name, data, "device")
        line = (
            f"{name:10s} {args.image_size:4d} px  bare {bare:9.1f} img/s  trainer {ours:9.1f} "
            f"img/s  ratio {ours / bare:.3f}"
        )
        host = None
        if args.host_path:
            host = trainer_images_per_s(args, name, data, "host")
            line += f"  host path {host:9.1f} img/s ({host / ours:.3f} of device path)"
        mfu = ours * flops / (args.peak_tflops * 1e12) if args.device == "cuda" else None
        if mfu is not None:
            line += f"  MFU {mfu:.3f}"
        print(line, flush=True)
        rows.append(
            f"| {name} | {args.image_size} | {args.batch_size} | {bare:,.0f} | {ours:,.0f} | "
            f"{ours / bare:.3f} | "
            + (f"{host:,.0f} ({host / ours:.3f}) | " if host is not None else "- | ")
            + (f"{mfu:.3f} |" if mfu is not None else "- |")
        )
        del data
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
