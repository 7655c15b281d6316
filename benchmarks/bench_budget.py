"""`search init` + `search run --budget` against a plain Optuna + torchvision script, on the
same folder of real photo pixels and the same wall-clock budget.

    .venv/bin/python benchmarks/bench_budget.py [--folder hard] [--minutes 10] [--repeats 3]
        [--images N] [--dir DIR] [--parallel]

Two folders, both from scikit-learn's two bundled photos (``load_sample_images``: a temple and
a flower), split about 80/20 into ``train/`` and ``val/`` so both sides validate on the same
images:

- ``hard`` (the default; 6,000 images, 1,200 or so to validate on): 80 classes, one per region
  of a 5 x 8 grid over either photo. Each image is a square crop of 0.6 to 1 times a cell
  (48-85 px of the photo) around the cell's centre, moved by up to a quarter cell (so
  neighbours overlap), brightness +-20%, a little noise, upscaled to 96 px and saved as a
  JPEG. Telling
  neighbouring regions apart takes detail: roof tiles, petals' edges and thin branches that
  vanish at 32 px; smooth regions (sky, the flower's blurred background) look alike at any
  size, so the best accuracy stays far from 1.0.
- ``easy`` (2,000 images): random crops at several scales, 200-400 px, in four classes (the
  left or right half of either photo); both sides tell them apart within seconds.

Our side: ``search init DIR --budget Nm`` then ``search run --study bench_budget --budget S``
with S = N minutes less what ``search init`` took (its scan and probes count against the same
minutes; the clock starts before it).

The script: what a user writes after Optuna's official examples: torchvision ``ImageFolder``
and ``DataLoader`` (decoding the JPEGs every epoch, 48 px, a random horizontal flip),
PyTorch's tutorial CNN or torchvision's resnet18 from scratch with a Dropout + Linear head,
TPE + median pruner over backbone / lr / batch size / dropout / optimizer, 6 epochs per
trial, val accuracy reported after every epoch: the size, epochs and backbones a user who
knows the machine picks by hand so that trials finish on two cores. At the deadline its running trial stops (as ours does), so both get the
same minutes.

Prints, for both and each repeat: trials finished, best val acc, and the time each took to
reach the script's final best of that repeat (at the end of the trial that reached it); then
the mean and spread (sample standard deviation) over the repeats. Each repeat starts from an
empty decoded-image and probe cache, with the repeat number as both sides' sampler seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("temple_left", "temple_right", "flower_left", "flower_right")
# The script's fixed choices: what a user who knows a 2-core CPU picks by hand (the issue's
# baseline: resnet18 or a small CNN at 48 px, 6 epochs), not a space no 10 minutes can search
SCRIPT_EPOCHS = 6
SCRIPT_SIZE = 48
SCRIPT_BACKBONES = ("tutorial_cnn", "resnet18")
HARD_GRID = (5, 8)  # regions of either photo, rows x columns: 80 classes
HARD_SIZE = 96  # px of the saved crops
IMAGES = {"hard": 6000, "easy": 2000}


# ------------------------------------------------------------------------------ the folder


def make_folder(root: Path, *, images: int, seed: int = 0) -> Path:
    """``images`` JPEG crops in ``root/{train,val}/<class>/``; reused when already there."""
    if (root / "val").is_dir() and sum(1 for _ in root.rglob("*.jpg")) == images:
        return root
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg: 427 x 640 x 3
    rng = np.random.default_rng(seed)
    for i in range(images):
        c = i % len(CLASSES)
        src = photos[c // 2]
        h, w = src.shape[:2]
        half = w // 2
        side = int(rng.integers(h // 6, h * 2 // 3))  # several scales: a sixth to 2/3 of h
        side = min(side, half)
        x0 = (c % 2) * half
        y = int(rng.integers(0, h - side + 1))
        x = x0 + int(rng.integers(0, half - side + 1))
        out = int(rng.integers(200, 401))
        split = "val" if rng.random() < 0.2 else "train"
        path = root / split / CLASSES[c] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop = Image.fromarray(src[y : y + side, x : x + side]).resize((out, out))
        crop.save(path, quality=int(rng.integers(75, 96)))
    return root


def make_hard_folder(root: Path, *, images: int, seed: int = 0) -> Path:
    """``images`` JPEG crops in ``root/{train,val}/<photo>_<row>_<col>/``, one class per grid
    region (see the module docstring); reused when already there."""
    if (root / "val").is_dir() and sum(1 for _ in root.rglob("*.jpg")) == images:
        return root
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg: 427 x 640 x 3
    rows, cols = HARD_GRID
    classes = [(p, r, c) for p in range(2) for r in range(rows) for c in range(cols)]
    rng = np.random.default_rng(seed)
    for i in range(images):
        p, r, c = classes[i % len(classes)]
        src = photos[p]
        h, w = src.shape[:2]
        cell_h, cell_w = h / rows, w / cols
        side = int(min(cell_h, cell_w) * rng.uniform(0.6, 1.0))
        cy = (r + 0.5 + rng.uniform(-0.25, 0.25)) * cell_h
        cx = (c + 0.5 + rng.uniform(-0.25, 0.25)) * cell_w
        y = int(np.clip(cy - side / 2, 0, h - side))
        x = int(np.clip(cx - side / 2, 0, w - side))
        crop = src[y : y + side, x : x + side].astype(np.float32) * rng.uniform(0.8, 1.2)
        crop += rng.normal(0.0, 2.0, crop.shape)  # sensor noise: no two crops byte-identical
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8))
        image = image.resize((HARD_SIZE, HARD_SIZE), Image.Resampling.BICUBIC)
        split = "val" if rng.random() < 0.2 else "train"
        name = f"{('temple', 'flower')[p]}_{r}_{c}"
        path = root / split / name / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=int(rng.integers(85, 96)))
    return root


# ---------------------------------------------------------------------------- our side


def ours(folder: Path, work: Path, *, minutes: float, seed: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    url = f"sqlite:///{work / 'ours.db'}"
    out = work / "studies" / "bench_budget.toml"
    cli = [sys.executable, "-m", "search.cli"]
    t0 = time.perf_counter()
    start = dt.datetime.now()
    init = [*cli, "init", str(folder), "--name", "bench_budget", "--out", str(out)]
    subprocess.run([*init, "--budget", f"{minutes:g}m", "--force"], check=True, env=env, cwd=work)
    text = out.read_text()  # the repeat's sampler seed, as the script's
    text = text.replace("\nseed = 0\n", f"\nseed = {seed}\n", 1)  # [sampler]'s only key
    out.write_text(text)
    init_s = time.perf_counter() - t0
    help_text = subprocess.run(
        [*cli, "run", "--help"], capture_output=True, text=True, env=env, cwd=work
    ).stdout
    # --trials far beyond what fits: the budget ends the run
    run = [*cli, "run", "--study", "bench_budget", "--storage", url, "-q", "--trials", "100000"]
    # The same minutes as the script in all: search init's scan and probes count against them.
    left = max(1.0, minutes * 60 - init_s)
    if "--budget" in help_text:
        run += ["--budget", f"{left:.0f}s"]
    else:  # before `run --budget` exists: stop starting trials when the time is up
        print(f"note: `search run` has no --budget here; using --timeout {left:.0f}")
        run += ["--timeout", f"{left:.0f}"]
    subprocess.run(run, check=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="bench_budget", storage=url)
    # Trained trials: a configuration refused before training (over_budget) or stopped at
    # the deadline (budget) is not a finished trial of the comparison.
    done = [
        t
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.user_attrs.get("reason") not in ("budget", "over_budget")
    ]
    timeline = sorted(
        ((t.datetime_complete - start).total_seconds(), t.value)
        for t in study.trials
        if t.state == TrialState.COMPLETE
    )
    refits = [t.number for t in study.trials if "refit_of" in t.user_attrs]
    return {
        "trials": len(done),
        "timeline": timeline,
        "wall": wall,
        "init": init_s,
        "refit": bool(refits),
        "study_file": text,
    }


# -------------------------------------------------------------------------- the script


class TutorialCNN(nn.Module):
    """PyTorch's CIFAR-10 tutorial network, the small CNN a user reaches for first."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def script_model(name: str, num_classes: int, dropout: float) -> nn.Module:
    import torchvision

    if name == "tutorial_cnn":
        return TutorialCNN(num_classes, dropout)
    model = getattr(torchvision.models, name)(weights=None)
    if hasattr(model, "fc"):  # ResNets
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    else:  # EfficientNet: classifier = Dropout + Linear
        last = model.classifier[-1]
        model.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(last.in_features, num_classes)
        )
    return model


def script(folder: Path, *, minutes: float, seed: int = 0) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    size = (SCRIPT_SIZE, SCRIPT_SIZE)
    train_tf = transforms.Compose(
        [transforms.Resize(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    val_tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor(), norm])
    train_set = datasets.ImageFolder(folder / "train", transform=train_tf)
    val_set = datasets.ImageFolder(folder / "val", transform=val_tf)
    workers = min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    deadline = t0 + minutes * 60
    timeline: list[tuple[float, float]] = []
    epochs_seen: list[tuple[float, float]] = []  # every epoch's val acc, finished trial or not

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        name = trial.suggest_categorical("backbone", list(SCRIPT_BACKBONES))
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        batch = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        opt_name = trial.suggest_categorical("optimizer", ["Adam", "SGD", "RMSprop"])
        model = script_model(name, len(train_set.classes), dropout)
        opt = getattr(torch.optim, opt_name)(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        train_dl = DataLoader(train_set, batch, shuffle=True, num_workers=workers)
        val_dl = DataLoader(val_set, 256, num_workers=workers)
        acc = 0.0
        for epoch in range(SCRIPT_EPOCHS):
            model.train()
            for x, y in train_dl:
                if time.perf_counter() > deadline:  # the same minutes as ours: stop here
                    trial.set_user_attr("reason", "budget")
                    raise optuna.TrialPruned("budget")
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in val_dl:
                    correct += int((model(x).argmax(1) == y).sum())
            acc = correct / len(val_set)
            epochs_seen.append((time.perf_counter() - t0, acc))
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        timeline.append((time.perf_counter() - t0, acc))
        return acc

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(objective, timeout=minutes * 60)
    done = [
        t
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.user_attrs.get("reason") != "budget"
    ]
    return {
        "trials": len(done),
        "timeline": timeline,
        "epochs_seen": epochs_seen,
        "wall": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------- the report


def best(timeline: list[tuple[float, float]]) -> float:
    return max((v for _, v in timeline), default=float("nan"))


def reached(timeline: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in sorted(timeline) if v >= target), None)


def _mean_sd(values: list[float], digits: int = 4) -> str:
    """``0.7123 +- 0.0040`` (sample standard deviation; a lone value has none); NaN (a side
    that finished no trial) left out."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.{digits}f} +- {spread:.{digits}f}"


def _chosen(study_file: str) -> list[str]:
    """The study file's lines that say what ``search init`` chose."""
    keys = ('"data.image_size"', '"model.backbone"', "image_size =", "epochs =", "min_resource")
    return [
        line.split("#")[0].rstrip() for line in study_file.splitlines() if line.startswith(keys)
    ]


def run_repeat(args: argparse.Namespace, folder: Path, repeat: int) -> dict[str, dict]:
    """One repeat of the chosen sides, each from an empty cache, seeded by ``repeat``."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")  # nothing decoded or probed yet
        if args.parallel:
            side = work / "script.json"
            cmd = [sys.executable, __file__, "--only", "script", "--minutes", f"{args.minutes:g}"]
            cmd += ["--folder", args.folder, "--images", str(args.images), "--dir", str(folder)]
            cmd += ["--seed", str(repeat), "--json", str(side)]
            proc = subprocess.Popen(cmd, env=os.environ.copy())
            results["ours"] = ours(folder, work, minutes=args.minutes, seed=repeat)
            proc.wait()
            results = {"script": json.loads(side.read_text()), **results}
        else:
            if args.only in (None, "script"):
                results["script"] = script(folder, minutes=args.minutes, seed=repeat)
            if args.only in (None, "ours"):
                results["ours"] = ours(folder, work, minutes=args.minutes, seed=repeat)
    return results


LABELS = {
    "script": "Optuna + torchvision ImageFolder script",
    "ours": "search init + search run --budget",
}


def report(repeats: list[dict[str, dict]]) -> None:
    """Each repeat's row per side, then the mean and spread over the repeats."""
    print(f"\n{'repeat':<7}{'side':<42} {'trials':>6} {'best val acc':>12} {'to script best':>14}"
          f" {'wall':>7}")  # fmt: skip
    reach: dict[str, list[float]] = {side: [] for side in LABELS}
    bests: dict[str, list[float]] = {side: [] for side in LABELS}
    for i, results in enumerate(repeats):
        target, mark = float("nan"), ""
        if "script" in results:
            target = best(results["script"]["timeline"])
            if target != target:  # no finished trial: its best epoch of any trial instead
                target, mark = best(results["script"].get("epochs_seen", [])), "*"
        for side, r in results.items():
            timeline = r["epochs_seen"] if mark and side == "script" else r["timeline"]
            when = reached(timeline, target) if target == target else None
            bests[side].append(best(r["timeline"]))
            if when is not None:
                reach[side].append(when)
            to_best = "-" if when is None else f"{when:.0f} s{mark}"
            print(
                f"{i:<7}{LABELS[side]:<42} {r['trials']:>6} {best(r['timeline']):>12.4f} "
                f"{to_best:>14} {r['wall']:>6.0f}s"
            )
        if "ours" in results:
            refit = ", refit done" if results["ours"].get("refit") else ", no refit"
            print(f"{'':<7}(ours includes search init: {results['ours']['init']:.0f} s{refit})")
        if "script" in results:  # what the script saw at any epoch, a trial finished or not
            seen = results["script"].get("epochs_seen", [])
            print(f"{'':<7}(the script's best epoch of any trial: {best(seen):.4f}, "
                  f"{len(seen)} epochs in all)")  # fmt: skip
    print("(* the script finished no trial: the time to its best epoch of any trial)")
    print(f"\nover {len(repeats)} repeats (mean +- sample sd):")
    for side in LABELS:
        if bests[side]:
            n, done = len(reach[side]), sum(1 for v in bests[side] if v == v)
            print(
                f"  {LABELS[side]:<42} best val acc {_mean_sd(bests[side])} ({done} of "
                f"{len(repeats)} finished a trial); reached the script's best in {n} of "
                f"{len(repeats)}, after {_mean_sd(reach[side], 0)} s"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", choices=["hard", "easy"], default="hard", help="which folder")
    ap.add_argument("--minutes", type=float, default=10.0, help="budget of each side")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, seeds 0, 1, ...")
    ap.add_argument("--images", type=int, help="JPEGs to generate (default: 6000 hard, 2000 easy)")
    ap.add_argument("--dir", help="reuse/keep the generated folder here (default: a temp dir)")
    ap.add_argument("--only", choices=["ours", "script"], help="run one side only")
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="run both sides at once, one thread each, so any other load on the machine "
        "weighs on both alike (default: one after the other, all threads each)",
    )
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # --only's repeat
    ap.add_argument("--json", help=argparse.SUPPRESS)  # --only: write the side's result here
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1, but got {args.repeats}")
    if not args.minutes > 0:
        raise SystemExit(f"error: --minutes must be > 0, but got {args.minutes}")
    args.images = args.images or IMAGES[args.folder]
    optuna.logging.set_verbosity(logging.WARNING)
    if args.parallel or args.json:
        os.environ["OMP_NUM_THREADS"] = "1"  # both sides, and the processes ours starts
        torch.set_num_threads(1)
    make = make_hard_folder if args.folder == "hard" else make_folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = make(Path(args.dir) if args.dir else Path(tmp) / "photos", images=args.images)
        if args.json:  # the script's side of a --parallel repeat
            result = script(folder, minutes=args.minutes, seed=args.seed)
            Path(args.json).write_text(json.dumps(result))
            return
        n_train = sum(1 for _ in (folder / "train").rglob("*.jpg"))
        n_val = sum(1 for _ in (folder / "val").rglob("*.jpg"))
        classes = sum(1 for d in (folder / "train").iterdir() if d.is_dir())
        print(
            f"torch {torch.__version__}, optuna {optuna.__version__}, {torch.get_num_threads()} "
            f"threads, {os.cpu_count()} CPUs, cuda {torch.cuda.is_available()}; {args.folder} "
            f"folder: {args.images} JPEGs in {classes} classes ({n_train} train / {n_val} val); "
            f"{args.minutes:g} min each, {args.repeats} repeats"
            + (", both sides at once" if args.parallel else ""),
            flush=True,
        )
        repeats = []
        for i in range(args.repeats):
            repeats.append(run_repeat(args, folder, i))
            if "ours" in repeats[-1]:
                print(f"repeat {i}: search init chose", "; ".join(_chosen(
                    repeats[-1]["ours"]["study_file"])), flush=True)  # fmt: skip
    report(repeats)


if __name__ == "__main__":
    main()
