"""`search init` + `search run --budget` against a plain Optuna + torchvision script, on the
same folder of real photo pixels and the same wall-clock budget.

    .venv/bin/python benchmarks/bench_budget.py [--minutes 10] [--images 2000] [--dir DIR]

The folder: random square crops at several scales of scikit-learn's two bundled photos
(``load_sample_images``: a temple and a flower), saved as 200-400 px JPEGs in four classes
(the left or right half of either photo), split 80/20 into ``train/`` and ``val/`` so both
sides validate on the same images.

Our side: ``search init DIR --budget Nm`` then ``search run --study bench_budget --budget Nm``
(the clock starts before ``search init``: the scan and the probes count).

The script: what a user writes after Optuna's official examples: torchvision ``ImageFolder``
and ``DataLoader`` (decoding the JPEGs every epoch, 64 px, a random horizontal flip),
torchvision backbones from scratch with a Dropout + Linear head, TPE + median pruner over
backbone / lr / batch size / dropout / optimizer, 10 epochs per trial, val accuracy reported
after every epoch. At the deadline its running trial stops (as ours does), so both get the
same minutes.

Prints, for both: trials finished, best val acc, and the time each took to reach the
script's final best (at the end of the trial that reached it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
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
SCRIPT_EPOCHS = 10
SCRIPT_SIZE = 64


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


# ---------------------------------------------------------------------------- our side


def ours(folder: Path, work: Path, *, minutes: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    url = f"sqlite:///{work / 'ours.db'}"
    out = work / "studies" / "bench_budget.toml"
    cli = [sys.executable, "-m", "search.cli"]
    t0 = time.perf_counter()
    start = dt.datetime.now()
    init = [*cli, "init", str(folder), "--name", "bench_budget", "--out", str(out)]
    subprocess.run([*init, "--budget", f"{minutes:g}m", "--force"], check=True, env=env, cwd=work)
    init_s = time.perf_counter() - t0
    help_text = subprocess.run(
        [*cli, "run", "--help"], capture_output=True, text=True, env=env, cwd=work
    ).stdout
    # --trials far beyond what fits: the budget ends the run
    run = [*cli, "run", "--study", "bench_budget", "--storage", url, "-q", "--trials", "100000"]
    if "--budget" in help_text:
        run += ["--budget", f"{minutes:g}m"]
    else:  # before `run --budget` exists: stop starting trials when the time is up
        left = max(1.0, minutes * 60 - init_s)
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
    return {"trials": len(done), "timeline": timeline, "wall": wall, "init": init_s}


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

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        name = trial.suggest_categorical(
            "backbone", ["tutorial_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b2"]
        )
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
        "wall": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------- the report


def best(timeline: list[tuple[float, float]]) -> float:
    return max((v for _, v in timeline), default=float("nan"))


def reached(timeline: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in sorted(timeline) if v >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="budget of each side")
    ap.add_argument("--images", type=int, default=2000, help="JPEGs to generate (80%% train)")
    ap.add_argument("--dir", help="reuse/keep the generated folder here (default: a temp dir)")
    ap.add_argument("--only", choices=["ours", "script"], help="run one side only")
    args = ap.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("HPSEARCH_CACHE_DIR", str(work / "cache"))
        folder = make_folder(Path(args.dir) if args.dir else work / "photos", images=args.images)
        n_train = sum(1 for _ in (folder / "train").rglob("*.jpg"))
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} "
            f"CPUs, cuda {torch.cuda.is_available()}; {args.images} JPEGs in {len(CLASSES)} "
            f"classes ({n_train} train); {args.minutes:g} min each"
        )
        results = {}
        if args.only in (None, "script"):
            results["script"] = script(folder, minutes=args.minutes)
        if args.only in (None, "ours"):
            results["ours"] = ours(folder, work, minutes=args.minutes)
    target = best(results["script"]["timeline"]) if "script" in results else float("nan")
    print(f"\n{'side':<44} {'trials':>6} {'best val acc':>12} {'to script best':>14} {'wall':>7}")
    labels = {
        "script": "Optuna + torchvision ImageFolder script",
        "ours": "search init + search run --budget",
    }
    for side, r in results.items():
        when = reached(r["timeline"], target) if target == target else None
        to_best = "-" if when is None else f"{when:.0f} s"
        print(
            f"{labels[side]:<44} {r['trials']:>6} {best(r['timeline']):>12.4f} "
            f"{to_best:>14} {r['wall']:>6.0f}s"
        )
    if "ours" in results:
        print(f"(ours includes search init: {results['ours']['init']:.0f} s)")


if __name__ == "__main__":
    main()
