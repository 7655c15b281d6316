"""The digits demo against a plain Optuna script in the style of Optuna's official
``pytorch_simple`` example (an MLP, TPE + median pruner), on the same data and split.

    .venv/bin/python benchmarks/bench_demo_vs_mlp.py [--mlp-trials 100] [--demo-trials 20]

Prints, side by side, the best validation accuracy and wall time of both.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from search.progress import Progress
from search.run import plan_run, run_study
from search.studyfile import load_study
from trainer import DataConfig, load_data

BATCH = 128  # as in pytorch_simple
EPOCHS = 10


def mlp_baseline(n_trials: int, seed: int = 0) -> tuple[float, float]:
    """pytorch_simple: 1-3 layers of 4-128 units, dropout 0.2-0.5, Adam/RMSprop/SGD with a
    log-uniform lr, 10 epochs, val accuracy reported per epoch, TPE + median pruner."""
    data = load_data(DataConfig(name="digits", image_size=8, normalize="none"))  # the raw 8x8
    x_tr = data.x_train.float().flatten(1) / 255.0
    x_va = data.x_val.float().flatten(1) / 255.0
    y_tr, y_va = data.y_train, data.y_val

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        layers, width_in = [], x_tr.shape[1]
        for i in range(trial.suggest_int("n_layers", 1, 3)):
            out = trial.suggest_int(f"n_units_l{i}", 4, 128)
            p = trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)
            layers += [nn.Linear(width_in, out), nn.ReLU(), nn.Dropout(p)]
            width_in = out
        model = nn.Sequential(*layers, nn.Linear(width_in, 10), nn.LogSoftmax(dim=1))
        name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        opt = getattr(torch.optim, name)(model.parameters(), lr=lr)
        acc = 0.0
        for epoch in range(EPOCHS):
            model.train()
            perm = torch.randperm(len(x_tr))
            for i in range(0, len(x_tr), BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                F.nll_loss(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                acc = (model(x_va).argmax(1) == y_va).float().mean().item()
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-input MLP is faster on one thread than on two
    t0 = time.perf_counter()
    try:
        study.optimize(objective, n_trials=n_trials)
    finally:
        torch.set_num_threads(threads)
    return study.best_value, time.perf_counter() - t0


def demo(n_trials: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_run(load_study("digits"), storage=f"sqlite:///{os.path.join(tmp, 'b.db')}")
        t0 = time.perf_counter()
        study = run_study(plan, n_trials=n_trials, progress=Progress(quiet=True))
        wall = time.perf_counter() - t0
        pruned = len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,)))
        return study.best_value, wall, pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlp-trials", type=int, default=100)
    ap.add_argument("--demo-trials", type=int, default=20)
    args = ap.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits 80/20 split")
    mlp_acc, mlp_s = mlp_baseline(args.mlp_trials)
    demo_acc, demo_s, pruned = demo(args.demo_trials)
    print(f"{'run':<42} {'trials':>6} {'best val_acc':>12} {'wall s':>8}")
    print(
        f"{'pytorch_simple-style MLP (TPE + median)':<42} {args.mlp_trials:>6} {mlp_acc:>12.4f} {mlp_s:>8.1f}"
    )
    print(
        f"{'search run --study digits':<42} {args.demo_trials:>6} {demo_acc:>12.4f} {demo_s:>8.1f}"
    )
    print(
        f"demo: {pruned} of {args.demo_trials} trials pruned; "
        f"error rate ratio (MLP / demo): {(1 - mlp_acc) / max(1 - demo_acc, 1 / 360):.1f}x "
        "(a 0-error demo counts as one error in 360)"
    )


if __name__ == "__main__":
    main()
