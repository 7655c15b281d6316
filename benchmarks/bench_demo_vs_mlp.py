"""The digits demo against a plain Optuna script in the style of Optuna's official
``pytorch_simple`` example (an MLP, TPE + median pruner), on the same data and split.

Like for like: both sides get the same wall-clock time (``--seconds``, counted from before
each side loads its data); both report the same metric, the validation accuracy of a finished
trial's best epoch (the MLP keeps the highest of its per-epoch accuracies as the trial's value,
as the demo's trainer does); neither side runs an enqueued hand-picked configuration (the demo
study's ``[[enqueue]]`` baseline is dropped here).

    .venv/bin/python benchmarks/bench_demo_vs_mlp.py [--seconds 120]
    .venv/bin/python benchmarks/bench_demo_vs_mlp.py --quick     # a smoke run: 20 s a side

Prints, side by side, the trials run, the best validation accuracy and the wall time of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time

import optuna
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch import nn

from search.experiments.run import plan_run, run_study
from search.report.progress import Progress
from search.study.budget import RunLimits
from search.study.studyfile import load_study
from trainer import DataConfig, load_data

BATCH = 128  # as in pytorch_simple
EPOCHS = 10


def mlp_baseline(seconds: float, seed: int = 0) -> tuple[float, float, int]:
    """pytorch_simple: 1-3 layers of 4-128 units, dropout 0.2-0.5, Adam/RMSprop/SGD with a
    log-uniform lr, 10 epochs, val accuracy reported per epoch, TPE + median pruner; trials
    start until ``seconds`` have passed. The trial's value is its best epoch's accuracy.
    (best value, wall seconds, finished trials)"""
    t0 = time.perf_counter()
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
        best = 0.0
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
            best = max(best, acc)  # the same metric as the demo's: the best epoch's
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-input MLP is faster on one thread than on two
    try:
        # Optuna's timeout starts no trial after it; the one running (~0.1 s here) finishes.
        study.optimize(objective, timeout=max(seconds - (time.perf_counter() - t0), 0.001))
    finally:
        torch.set_num_threads(threads)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return _best(study), time.perf_counter() - t0, len(finished)


def _best(study: optuna.Study) -> float:
    """The best value, or nan when no trial completed in the time."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return max((t.value for t in done), default=float("nan"))


def demo(seconds: float) -> tuple[float, float, int, int]:
    """``search run --study digits --budget SECONDS`` without the study's enqueued baseline.
    (best value, wall seconds, finished trials, pruned trials)"""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        started = time.monotonic()  # the budget counts planning (data, model checks) too
        spec = dataclasses.replace(load_study("digits"), enqueue=())
        plan = plan_run(spec, storage=f"sqlite:///{os.path.join(tmp, 'b.db')}")
        study = run_study(
            plan,
            n_trials=None,
            limits=RunLimits(wall_seconds=seconds),
            started=started,
            progress=Progress(quiet=True),
        )
        wall = time.perf_counter() - t0
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        pruned = sum(t.state == TrialState.PRUNED for t in finished)
        return _best(study), wall, len(finished), pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="wall-clock time for each side")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 s a side")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 20.0
    optuna.logging.set_verbosity(logging.WARNING)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits 80/20 split, "
        f"{args.seconds:.0f} s a side, best-epoch val_acc on both sides, nothing enqueued"
    )
    mlp_acc, mlp_s, mlp_n = mlp_baseline(args.seconds)
    demo_acc, demo_s, demo_n, pruned = demo(args.seconds)
    print(f"{'run':<42} {'trials':>6} {'best val_acc':>12} {'wall s':>8}")
    mlp_name = "pytorch_simple-style MLP (TPE + median)"
    print(f"{mlp_name:<42} {mlp_n:>6} {mlp_acc:>12.4f} {mlp_s:>8.1f}")
    demo_name = "search run --study digits (no enqueue)"
    print(f"{demo_name:<42} {demo_n:>6} {demo_acc:>12.4f} {demo_s:>8.1f}")
    print(
        f"demo: {pruned} of {demo_n} trials pruned; "
        f"error rate ratio (MLP / demo): {(1 - mlp_acc) / max(1 - demo_acc, 1 / 360):.1f}x "
        "(a 0-error demo counts as one error in 360)"
    )


if __name__ == "__main__":
    main()
