"""One training epoch: our data path against a seed-style loop, side by side.

Generates a folder of JPEGs (about 300 px, 10 classes, ``train/`` and ``val/``), then, for each
model, trains one epoch at ``--image-size`` px with the same initial weights, batch size,
optimizer and augmentation policy, in fp32:

- ours: ``trainer.load_data`` (every image decoded once into the uint8 cache, memory-mapped),
  ``trainer.augment`` on whole batches of tensors, and the step of ``trainer/loop.py``;
- seed-style: torchvision ``ImageFolder`` + PIL transforms (seed 000's ``train_tfm`` at the
  training size; for ``strong`` also GaussianBlur and RandomErasing, as ours) + ``DataLoader``
  with ``--workers`` worker processes.

Prints images/second for both and the ratio, the first trial's cache build time (decode and
write) and the second trial's data-ready time (cache hit: map the file, no decoding).

    .venv/bin/python benchmarks/bench_data.py                  # 3000 images, resnet18 + small_cnn
    .venv/bin/python benchmarks/bench_data.py --images 500 --models small_cnn   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def warm_up(model: torch.nn.Module, size: int, bs: int, fmt) -> None:
    """One step on random data, so that neither side pays the kernels' first-call cost."""
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=fmt)
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)


def our_epoch(cfg, data, model: torch.nn.Module | None) -> tuple[int, float]:
    """The step of trainer/loop.py (CPU: no AMP), on the cached tensors; without a model,
    only the batches (index, augment, normalise) are made."""
    from trainer.augment import make_augment, mix_batch
    from trainer.losses import create_loss
    from trainer.optim import create_optimizer

    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    aug = make_augment(cfg.data.augment, image_size=cfg.data.image_size)
    criterion = create_loss(cfg.loss)
    if model is not None:
        model.train()
        optimizer = create_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    bs, n = cfg.data.batch_size, len(data.x_train)
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=gen)
    steps = n // bs
    for step in range(steps):
        idx = perm[step * bs : (step + 1) * bs]
        xb, yb = data.x_train[idx].float() / 255.0, data.y_train[idx]
        if aug is not None:
            xb = aug(xb, gen)
        ya, yb2, lam = yb, yb, 1.0
        if cfg.data.cutmix > 0 or cfg.data.mixup > 0:
            xb, ya, yb2, lam = mix_batch(
                xb, yb, cutmix=cfg.data.cutmix, mixup=cfg.data.mixup, generator=gen
            )
        xb = ((xb - mean) / std).contiguous(memory_format=fmt)
        if model is None:
            continue
        logits = model(xb)
        loss = lam * criterion(logits, ya) + (1 - lam) * criterion(logits, yb2)
        loss.item()  # the loop checks every loss for NaN
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * bs, time.perf_counter() - t0


def seed_epoch(
    cfg, data, model: torch.nn.Module | None, train_dir: Path, workers: int
) -> tuple[int, float]:
    """PIL ImageFolder + torchvision transforms + DataLoader, fp32, as the seeds trained;
    without a model, only the batches are loaded."""
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
    if model is not None:
        model.train()
        optimizer = create_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim)
    seen = 0
    t0 = time.perf_counter()  # worker start-up is part of every seed-style epoch
    for xb, yb in loader:
        seen += len(yb)
        if model is None:
            continue
        loss = criterion(model(xb), yb)
        loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return seen, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3000, help="JPEGs to generate (80%% train)")
    p.add_argument("--side", type=int, default=300, help="generated image side, px (+-40)")
    p.add_argument("--image-size", type=int, default=64, help="training resolution, px")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--models", default="resnet18,small_cnn,seed_cnn")
    p.add_argument("--policy", default="strong", choices=["none", "light", "strong"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="seed-style loader")
    p.add_argument("--dir", help="reuse/keep the generated folder here (default: a temp dir)")
    args = p.parse_args(argv)

    import trainer.data
    from trainer import TrainConfig, build_model, load_data

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "images"
        os.environ["HPSEARCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # a cold cache
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
            "train.device": "cpu",
        }
        cfg = TrainConfig.from_flat(flat)

        t = time.perf_counter()
        data = load_data(cfg.data)
        build = time.perf_counter() - t
        trainer.data._load_cached.cache_clear()  # what a second trial in a fresh process sees
        t = time.perf_counter()
        data = load_data(cfg.data)
        ready = time.perf_counter() - t
        cache_mb = sum(f.stat().st_size for f in Path(tmp, "cache").rglob("*.npy")) / 2**20
        print(
            f"first trial: decode {n_files} images + cache ({cache_mb:.0f} MiB) in {build:.2f} s "
            f"({n_files / build:.0f} img/s); second trial data ready in {ready * 1000:.0f} ms"
        )
        print(
            f"{'model':<12} {'ours img/s':>11} {'seed-style img/s':>17} {'ratio':>6}   "
            f"(one epoch: {len(data.x_train)} train images, batch {args.batch_size}, "
            f"{args.image_size} px, augment={args.policy}, fp32)"
        )
        rows = []
        n_ours, t_ours = our_epoch(cfg, data, None)
        n_seed, t_seed = seed_epoch(cfg, data, None, root / "train", args.workers)
        rows.append(("(data only)", n_ours / t_ours, n_seed / t_seed))
        _print_row(*rows[-1])
        for backbone in args.models.split(","):
            mcfg = cfg.replace({"model.backbone": backbone})
            ours_model = build_model(mcfg, data, torch.device("cpu"))
            warm_up(ours_model, args.image_size, args.batch_size, torch.channels_last)
            n_ours, t_ours = our_epoch(mcfg, data, ours_model)
            seed_cfg = mcfg.replace({"train.channels_last": False})
            seed_model = build_model(seed_cfg, data, torch.device("cpu"))  # same initial weights
            warm_up(seed_model, args.image_size, args.batch_size, torch.contiguous_format)
            n_seed, t_seed = seed_epoch(seed_cfg, data, seed_model, root / "train", args.workers)
            rows.append((backbone, n_ours / t_ours, n_seed / t_seed))
            _print_row(*rows[-1])
    return rows


def _print_row(name: str, ours: float, seed: float) -> None:
    print(f"{name:<12} {ours:>11.0f} {seed:>17.0f} {ours / seed:>5.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
