"""One training epoch: our data path against a seed-style loop, side by side.

Generates a folder of JPEGs (about 300 px, 10 classes, ``train/`` and ``val/``), then, for each
model, trains one epoch at ``--image-size`` px with the same initial weights, batch size,
optimizer (Adam, constant lr), augmentation policy and memory format, in fp32:

- ours: ``trainer.train`` itself (one epoch, no schedule, no early stopping) on the data of
  ``trainer.load_data`` (every image decoded once into the uint8 cache, memory-mapped); the
  epoch's training time runs from the start of the epoch (the call plus the ``setup_seconds``
  that ``train`` reports) to the last call of the reporter's per-step hook, so validation is
  not counted;
- seed-style: torchvision ``ImageFolder`` + PIL transforms (seed 000's ``train_tfm`` at the
  training size; for ``strong`` also GaussianBlur and RandomErasing, as ours) + ``DataLoader``
  with ``--workers`` worker processes, the loop the seeds trained with, unchanged.

Both sides use the contiguous (NCHW) memory format, as the seed-style loop does;
``--channels-last`` puts both into channels_last (ours through ``train.channels_last``, the
seed-style loop by converting its model and batches).

Prints images/second for both and the ratio, and the data-ready time of the first trial (decode
and write the cache) and of a second trial in a fresh process (cache hit), with their ratio.

    .venv/bin/python benchmarks/bench_data.py            # 3000 images, three models
    .venv/bin/python benchmarks/bench_data.py --quick    # a smoke run: 400 images, seed_cnn
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = 10


def make_folder(root: Path, n: int, side: int, val_fraction: float = 0.2) -> None:
    """``n`` JPEGs of roughly ``side`` px: smooth class-tinted structure plus noise."""
    jobs = []
    for i in range(n):
        split = "val" if (i // CLASSES) % round(1 / val_fraction) == 0 else "train"
        jobs.append((root / split / f"c{i % CLASSES}" / f"{i:05d}.jpg", i, side))
    for d in {p.parent for p, _, _ in jobs}:
        d.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=64))


def _write_jpeg(job: tuple[Path, int, int]) -> None:
    path, i, side = job
    rng = np.random.default_rng(i)
    w, h = (side + rng.integers(-40, 41, size=2)).tolist()
    tint = np.array([(i % CLASSES) * 25, 255 - (i % CLASSES) * 20, 128], dtype=np.float32)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    img = 0.6 * smooth + 0.4 * tint + rng.normal(0, 12, (h, w, 3))
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def seed_transforms(policy: str, size: int, mean, std):
    """Seed 000's train_tfm at ``size`` px (plus blur and erasing for ``strong``)."""
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if policy == "none":
        return T.Compose([T.Resize((size, size)), *norm])
    if policy == "light":
        return T.Compose(
            [T.RandomResizedCrop(size, scale=(0.8, 1.0)), T.RandomHorizontalFlip(), *norm]
        )
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.8, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(10),
            T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            T.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1 * size / 256, 2.0 * size / 256))], p=0.5),
            *norm,
            T.RandomErasing(p=0.5),
        ]
    )


def warm_up(backbone_cfg, data, fmt) -> None:
    """One step on random data with a throwaway model of the same backbone, so that neither
    side pays the kernels' first-call cost inside its timed epoch."""
    from trainer import build_model

    model = build_model(backbone_cfg, data, torch.device("cpu")).to(memory_format=fmt)
    size, bs = backbone_cfg.data.image_size, backbone_cfg.data.batch_size
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=fmt)
    model(x).sum().backward()


class _StepClock:
    """A reporter whose per-step hook (see ``trainer.loop``) notes when the last step ended."""

    def __init__(self) -> None:
        self.last = 0.0
        self.images = 0

    def report(self, epoch: int, metrics: dict) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def step(self, epoch: int, step: int, steps_per_epoch: int, images: int) -> bool:
        self.last, self.images = time.perf_counter(), images
        return False


def our_epoch(cfg, data) -> tuple[int, float]:
    """One epoch of ``trainer.train``: (images, seconds from the epoch's start to its last
    step). The epoch starts after the set-up that ``train`` reports (model, optimizer)."""
    from trainer import train

    clock = _StepClock()
    t0 = time.perf_counter()
    result = train(cfg, reporter=clock, data=data)
    if result.status != "complete":
        sys.exit(f"ours: {result.status}: {result.reason}")
    return clock.images, clock.last - (t0 + result.setup_seconds)


def seed_epoch(
    cfg, data, model: torch.nn.Module, train_dir: Path, workers: int, fmt
) -> tuple[int, float]:
    """PIL ImageFolder + torchvision transforms + DataLoader, fp32, as the seeds trained:
    (images, seconds from the loader's start, its worker start-up included, to the last
    step)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from trainer.optim import create_optimizer

    tfm = seed_transforms(cfg.data.augment, cfg.data.image_size, data.mean, data.std)
    loader = DataLoader(
        ImageFolder(str(train_dir), transform=tfm),
        batch_size=cfg.data.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,  # as ours: no ragged last batch
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    criterion = torch.nn.CrossEntropyLoss()
    model = model.to(memory_format=fmt)
    model.train()
    optimizer = create_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim)
    seen = 0
    t0 = time.perf_counter()  # worker start-up is part of every seed-style epoch
    for xb, yb in loader:
        seen += len(yb)
        loss = criterion(model(xb.contiguous(memory_format=fmt)), yb)
        loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return seen, time.perf_counter() - t0


_DATA_READY = """
import json, sys, time
from trainer import TrainConfig, load_data
cfg = TrainConfig.from_flat(json.loads(sys.argv[1]))
t = time.perf_counter()
load_data(cfg.data)
print(time.perf_counter() - t)
"""


def data_ready_seconds(flat: dict, cache: Path) -> float:
    """``load_data`` in a fresh process, as a trial's worker calls it (imports not counted)."""
    env = dict(os.environ, HPSEARCH_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _DATA_READY, json.dumps(flat)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3000, help="JPEGs to generate (80%% train)")
    p.add_argument("--side", type=int, default=300, help="generated image side, px (+-40)")
    p.add_argument("--image-size", type=int, default=64, help="training resolution, px")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--models", default="resnet18,small_cnn,seed_cnn")
    p.add_argument("--policy", default="strong", choices=["none", "light", "strong"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="seed-style loader")
    p.add_argument(
        "--channels-last", action="store_true", help="channels_last on both sides (default: NCHW)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 400 images, seed_cnn only")
    p.add_argument("--dir", help="reuse/keep the generated folder here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.models = 400, "seed_cnn"

    from trainer import TrainConfig, build_model, load_data

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "images"
        cache = Path(tmp) / "cache"  # a cold cache
        os.environ["HPSEARCH_CACHE_DIR"] = str(cache)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
            f"; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"python {platform.python_version()}"
        )
        if not (root / "train").is_dir():
            t = time.perf_counter()
            make_folder(root, args.images, args.side)
            print(
                f"generated {args.images} JPEGs of ~{args.side} px in {time.perf_counter() - t:.1f} s"
            )
        n_files = sum(1 for _ in root.rglob("*.jpg"))
        flat = {
            "data.name": "folder",
            "data.root": str(root),
            "data.image_size": args.image_size,
            "data.batch_size": args.batch_size,
            "data.augment": args.policy,
            "optim.name": "adam",
            "loss.name": "ce",
            "sched.name": "none",  # the seed-style loop keeps its lr constant
            "train.device": "cpu",
            "train.epochs": 1,
            "train.patience": 0,
            "train.channels_last": args.channels_last,
        }
        cfg = TrainConfig.from_flat(flat)

        first = data_ready_seconds(flat, cache)
        second = data_ready_seconds(flat, cache)
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*.npy")) / 2**20
        print(
            f"data ready, first trial (decode {n_files} images + write the {cache_mb:.0f} MiB "
            f"cache): {first:.2f} s; second trial (fresh process, cache hit): "
            f"{second * 1000:.0f} ms = {second / first:.1%} of the first"
        )
        data = load_data(cfg.data)
        print(
            f"{'model':<12} {'ours img/s':>11} {'seed-style img/s':>17} {'ratio':>6}   "
            f"(one epoch: {len(data.x_train)} train images, batch {args.batch_size}, "
            f"{args.image_size} px, augment={args.policy}, fp32, "
            f"{'channels_last' if args.channels_last else 'NCHW'} on both sides)"
        )
        rows = []
        for backbone in args.models.split(","):
            mcfg = cfg.replace({"model.backbone": backbone})
            warm_up(mcfg, data, fmt)
            n_ours, t_ours = our_epoch(mcfg, data)
            seed_model = build_model(mcfg, data, torch.device("cpu"))  # same initial weights
            n_seed, t_seed = seed_epoch(mcfg, data, seed_model, root / "train", args.workers, fmt)
            rows.append((backbone, n_ours / t_ours, n_seed / t_seed))
            _print_row(*rows[-1])
    return rows


def _print_row(name: str, ours: float, seed: float) -> None:
    print(f"{name:<12} {ours:>11.0f} {seed:>17.0f} {ours / seed:>5.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
