"""Low resolution first, then promoted to a higher one, against one plain image size, for the
same number of pixels trained, on bench_budget's hard folder.

    .venv/bin/python benchmarks/bench_resolution.py [--dir DIR] [--seeds 0 1] [--epochs 12]

The question behind ``search init``'s searched sizes: should a search train its trials at a
low resolution and promote the promising ones to a higher one (progressive resizing), or is a
plain choice among sizes, each trial at one size, as good? Every arm trains the same
configuration (the backbone ``search init`` keeps on a CPU, seed_cnn; Adam 1e-3, batch 32,
dropout 0.2, light augmentation, cosine schedule, no early stopping) for the pixels of
``--epochs`` epochs at 64 px:

- ``64 px``: all epochs at 64 px;
- ``48 px``, ``32 px``: at one lower size, as many more epochs as the pixels allow;
- ``32 -> 64 px``: a third of the pixels at 32 px, then the rest at 64 px from the best
  weights of the first part (``model.pretrained`` = its checkpoint; a new optimiser and
  schedule: what a promotion between trials would do).

Prints each arm's best validation accuracy and training seconds per seed, and the means.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_budget import make_hard_folder  # noqa: E402

import trainer  # noqa: E402

BASE = {
    "model.backbone": "seed_cnn",
    "optim.name": "adam",
    "optim.lr": 1e-3,
    "data.batch_size": 32,
    "model.dropout": 0.2,
    "data.augment": "light",
    "train.patience": 0,
    "data.name": "folder",
}


def run(folder: Path, size: int, epochs: int, seed: int, pretrained: str | None = None,
        checkpoint: Path | None = None) -> trainer.TrainResult:  # fmt: skip
    flat = {**BASE, "data.root": str(folder), "data.image_size": size, "train.epochs": epochs}
    flat["train.seed"] = seed
    if pretrained:
        flat["model.pretrained"] = pretrained
    return trainer.train(trainer.TrainConfig.from_flat(flat), checkpoint_path=checkpoint)


def arms(folder: Path, epochs: int, seed: int, tmp: Path) -> dict[str, tuple[float, float]]:
    """Arm -> (best val acc, training seconds)."""
    out = {}
    for name, size in (("64 px", 64), ("48 px", 48), ("32 px", 32)):
        n = round(epochs * (64 / size) ** 2)
        r = run(folder, size, n, seed)
        out[f"{name} x {n}"] = (r.best_val_acc, r.train_seconds)
        print(f"  seed {seed} {name} x {n}: {r.best_val_acc:.4f} in {r.train_seconds:.0f} s",
              flush=True)  # fmt: skip
    low = round(epochs / 3 * 4)  # a third of the pixels at 32 px
    high = epochs - round(epochs / 3)
    first = run(folder, 32, low, seed, checkpoint=tmp / f"low-{seed}.safetensors")
    second = run(folder, 64, high, seed, pretrained=first.checkpoint)
    best = max(first.best_val_acc, second.best_val_acc)
    secs = first.train_seconds + second.train_seconds
    out[f"32 x {low} -> 64 px x {high}"] = (best, secs)
    print(f"  seed {seed} 32 x {low} -> 64 px x {high}: {first.best_val_acc:.4f} -> "
          f"{second.best_val_acc:.4f} in {secs:.0f} s", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="the hard folder (made there when missing; default: temp)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=12, help="the pixel budget, in 64 px epochs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HPSEARCH_CACHE_DIR", str(Path(tmp) / "cache"))
        folder = make_hard_folder(Path(args.dir or Path(tmp) / "hard"), images=6000)
        print(f"torch {torch.__version__}, {args.threads} thread(s); hard folder {folder}; "
              f"pixels of {args.epochs} epochs at 64 px per arm", flush=True)  # fmt: skip
        results = [arms(folder, args.epochs, seed, Path(tmp)) for seed in args.seeds]
    print(f"\n{'arm':<26} {'best val acc':>12} {'train s':>8}  (mean over {len(results)} seeds)")
    for arm in results[0]:
        accs = [r[arm][0] for r in results]
        secs = [r[arm][1] for r in results]
        print(f"{arm:<26} {statistics.fmean(accs):>12.4f} {statistics.fmean(secs):>8.0f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s in all)")
