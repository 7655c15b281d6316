"""Workers: trials per hour with 1 and 2 local workers, and the storage's cost per trial.

Part 1 runs the digits study (its data, space and sampler) to ``--trials`` finished trials
with ``search run --workers 1 --threads C`` (the baseline: one process using all C cores, what
a plain ``search run`` does) and ``--workers C --threads 1`` (one single-threaded worker per
core), each against a fresh PostgreSQL database, and reports trials/hour from the wall time of
the whole command (process start, imports and the final summary included). So that every trial does the same
work, the benchmark pins what changes a trial's cost (batch size 64, Adam, small_cnn width
16, no early stopping, no pruner), and runs ``--epochs`` epochs per trial.

Part 2 measures what the search machinery costs per trial apart from training, on SQLite
and on PostgreSQL: claiming the slot under the lock, the heartbeat, drawing the parameters,
one intermediate value per epoch with the pruner's question, the user attributes, the
dashboard note, telling the outcome. ``trainer.train`` is replaced by a stub that reports
``--epochs`` canned epochs, and the learning-curve/confusion-matrix artifacts (plotly, not
storage) are skipped.

    .venv/bin/python benchmarks/bench_workers.py                 # starts its own PostgreSQL
    .venv/bin/python benchmarks/bench_workers.py --quick         # smoke run: 4 trials x 2 epochs
    .venv/bin/python benchmarks/bench_workers.py --pg-url postgresql+psycopg://hp@host/db

Without ``--pg-url`` a throwaway server is started with Debian's initdb/pg_ctl on 127.0.0.1
(as ``tests/pgserver.py`` does); with it, studies named ``bench-*`` are created there.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

STUDY = """
description = "digits, fixed cost per trial (benchmarks/bench_workers.py)"
space = "digits"

[data]
name = "digits"
image_size = 16
val_fraction = 0.2
split_seed = 0

[budget]
epochs = {epochs}
patience = 0

[sampler]
name = "tpe"
seed = 0

[pruner]
name = "none"

[fixed]
"train.seed" = 0
"data.batch_size" = 64
"optim.name" = "adam"
"model.backbone" = "small_cnn"
"model.width" = 16
"""


def _pgserver():
    spec = importlib.util.spec_from_file_location("pgserver", REPO / "tests" / "pgserver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Databases:
    """Fresh databases on a given server, or on a throwaway one started here."""

    def __init__(self, url: str | None) -> None:
        self.server = None
        self.url = url
        if url is None:
            pgserver = _pgserver()
            bindir = pgserver.pg_bin_dir()
            if bindir is None:
                sys.exit("PostgreSQL binaries not found: apt-get install postgresql, or --pg-url")
            self.server = pgserver.PgServer(bindir, durable=True)  # fsync on, as in production
            self.server.start()

    def fresh(self) -> str:
        if self.server is not None:
            return self.server.url(self.server.new_database())
        return self.url

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def part1(
    dbs: Databases, studies: Path, trials: int, epochs: int, cores: int
) -> dict[tuple[int, int], dict]:
    """(workers, threads per worker) -> figures, for (1, cores) and (cores, 1)."""
    out = {}
    for workers, threads in ((1, cores), (cores, 1)):
        name = f"bench-{uuid.uuid4().hex[:8]}"
        (studies / f"{name}.toml").write_text(STUDY.format(epochs=epochs))
        url = dbs.fresh()
        env = dict(os.environ, SEARCH_STUDIES=str(studies), SEARCH_STORAGE=url)
        env["SEARCH_ARTIFACTS"] = str(studies / "artifacts")
        cmd = [sys.executable, "-m", "search.cli", "run", "--study", name, "--trials",
               str(trials), "--workers", str(workers), "--threads", str(threads), "-q"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=studies)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            what = f"--workers {workers} --threads {threads}"
            sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        import optuna

        study = optuna.load_study(study_name=name, storage=url)
        done = [t for t in study.trials if t.state.is_finished()]
        busy = sum(t.duration.total_seconds() for t in done)
        ends = sorted(t.datetime_complete for t in done)
        span = (ends[-1] - ends[0]).total_seconds()
        out[workers, threads] = r = {
            "wall": wall,
            "trials": len(done),
            "per_hour": len(done) / wall * 3600,
            # after the first trial finished: no process start, imports or first-trial set-up
            "steady_per_hour": (len(done) - 1) / span * 3600 if span > 0 else float("nan"),
            "trial_seconds": busy / len(done),
        }
        print(
            f"  {workers} worker(s) x {threads} thread(s): {len(done)} trials in {wall:.1f} s -> "
            f"{r['per_hour']:.0f} trials/hour, "
            f"{r['steady_per_hour']:.0f} after the first trial "
            f"(mean trial {busy / len(done):.2f} s)",
            file=sys.stderr,
        )
    return out


def part2(url: str, studies: Path, trials: int, epochs: int) -> float:
    """Mean seconds per trial of the search loop with training stubbed out."""
    import search.experiments.objective as objective_mod
    import trainer
    from search.experiments.run import plan_run, run_study
    from search.report.progress import Progress
    from search.store.workers import WorkerOptions
    from search.study.studyfile import load_study

    name = f"bench-{uuid.uuid4().hex[:8]}"
    (studies / f"{name}.toml").write_text(STUDY.format(epochs=epochs))
    os.environ["SEARCH_STUDIES"] = str(studies)
    os.environ["SEARCH_ARTIFACTS"] = str(studies / "artifacts")

    def stub_train(cfg, *, reporter=None, **kwargs):
        history = []
        for e in range(1, cfg.train.epochs + 1):
            m = {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 1.0 / e,
                 "val_acc": 0.5 + 0.01 * e, "lr": 1e-3, "seconds": 0.0}  # fmt: skip
            history.append(m)
            reporter.report(e, m)
            reporter.should_stop()
        return trainer.TrainResult("complete", "stub", history=history, best_epoch=len(history))

    def note_only(trial, cfg, result, *, store_root):
        from optuna_dashboard import save_note

        save_note(trial, "stub note")  # the note is a storage write; the figures are not

    real = objective_mod.trainer.train, objective_mod.annotate_trial
    objective_mod.trainer.train, objective_mod.annotate_trial = stub_train, note_only
    try:
        plan = plan_run(load_study(name), storage=url)
        quiet = Progress(io.StringIO(), quiet=True)
        run_study(plan, n_trials=2, progress=quiet, options=WorkerOptions())  # warm-up
        start = time.perf_counter()
        run_study(plan, n_trials=2 + trials, progress=quiet, options=WorkerOptions())
        return (time.perf_counter() - start) / trials
    finally:
        objective_mod.trainer.train, objective_mod.annotate_trial = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", help="a PostgreSQL database to use (default: start one)")
    ap.add_argument("--trials", type=int, default=16, help="trials per worker count (part 1)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per trial (part 1)")
    ap.add_argument("--overhead-trials", type=int, default=40, help="stubbed trials (part 2)")
    ap.add_argument(
        "--cores", type=int, default=os.cpu_count() or 2, help="cores to use (default: all)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 4 trials x 2 epochs, 5 stubbed"
    )
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.overhead_trials = 4, 2, 5
    if args.cores < 2:
        sys.exit("--cores must be >= 2: the comparison is one worker against one per core")

    dbs = Databases(args.pg_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            tmp = Path(tmp)
            print(f"part 1: digits, {args.trials} trials x {args.epochs} epochs", file=sys.stderr)
            speed = part1(dbs, tmp, args.trials, args.epochs, args.cores)
            print("part 2: per-trial overhead without training", file=sys.stderr)
            sqlite = part2(f"sqlite:///{tmp / 'overhead.db'}", tmp, args.overhead_trials, 12)
            pg = part2(dbs.fresh(), tmp, args.overhead_trials, 12)
    finally:
        dbs.close()

    cpu = platform.processor() or platform.machine()
    print(f"\n{os.cpu_count()} CPU cores ({cpu}), {args.cores} used; PostgreSQL "
          f"on 127.0.0.1 over TCP\n")  # fmt: skip
    print(
        "| workers x threads | trials | wall (s) | trials/hour (wall) | ratio | "
        "trials/hour (after 1st trial) | ratio | mean trial (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = speed[1, args.cores]  # the baseline: one worker with every core
    for (workers, threads), r in speed.items():
        print(
            f"| {workers} x {threads} | {r['trials']} | {r['wall']:.1f} | {r['per_hour']:.0f} | "
            f"{r['per_hour'] / base['per_hour']:.2f}x | {r['steady_per_hour']:.0f} | "
            f"{r['steady_per_hour'] / base['steady_per_hour']:.2f}x | "
            f"{r['trial_seconds']:.2f} |"
        )
    print()
    print("| storage | search overhead per trial (ms), 12 epochs reported, training stubbed |")
    print("|---|---:|")
    print(f"| SQLite (file) | {sqlite * 1000:.0f} |")
    print(f"| PostgreSQL (127.0.0.1) | {pg * 1000:.0f} |")


if __name__ == "__main__":
    main()
