"""Ray against the local launcher: the same digits trials through ``search run --workers 2``
and through ``search run --ray local --cpus-per-trial 1`` (two single-threaded workers each).

The baseline is what a user on one machine runs without Ray: the local launcher with one worker
per core. Both sides run the same study (fixed cost per trial: batch 64, Adam, small_cnn width
16, ``--epochs`` epochs, no pruner, no early stopping), one thread per worker, against a fresh
database each on the same PostgreSQL server, in the same network namespace (Ray binds
127.0.0.1 only and never sees this machine's address); the server is reached over its Unix
socket. Reported per side, mean over ``--repeats`` alternating runs:

- trials per hour after the first: (finished trials - 1) / (last finish - first finish), from
  the trials' own timestamps in the study;
- start-up: from the command's start to its first trial's start (process start, imports, the
  study's set-up; on the Ray side, Ray's own start too), and the difference between the sides.

    .venv/bin/python benchmarks/bench_ray.py                 # 16 trials x 3 epochs, 3 repeats
    .venv/bin/python benchmarks/bench_ray.py --quick         # 4 trials x 1 epoch, 1 repeat

Needs root (``unshare``), Debian's PostgreSQL and ``pip install 'hpsearch[ray]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_workers import STUDY, Databases  # noqa: E402  (the same study as bench_workers)

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _socket_url(dbs: Databases) -> str:
    server = dbs.server
    return f"postgresql+psycopg://hp@/{server.new_database()}?host={server.sock}&port={server.port}"


def one_run(side: str, dbs: Databases, studies: Path, trials: int, epochs: int) -> dict:
    import optuna

    name = f"bench-{uuid.uuid4().hex[:8]}"
    (studies / f"{name}.toml").write_text(STUDY.format(epochs=epochs))
    url = _socket_url(dbs)
    env = dict(os.environ, SEARCH_STUDIES=str(studies), SEARCH_STORAGE=url, OMP_NUM_THREADS="1")
    env["SEARCH_ARTIFACTS"] = str(studies / "artifacts")
    env["RAY_AUTH_MODE"] = "disabled"  # a private Ray in this namespace; no shared token file
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    how = ["--workers", "2", "--threads", "1"] if side == "workers" else [
        "--ray", "local", "--cpus-per-trial", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "search.cli", "run", "--study", name, "--trials", str(trials),
           "-q", *how]  # fmt: skip
    script = "ip link set lo up && exec " + " ".join(f"'{c}'" for c in cmd)
    t0 = time.time()
    proc = subprocess.run([*UNSHARE, "bash", "-c", script], env=env, capture_output=True,
                          text=True, cwd=studies)  # fmt: skip
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{side} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    done = [t for t in optuna.load_study(study_name=name, storage=url).trials
            if t.state.is_finished() and t.datetime_complete]  # fmt: skip
    assert len(done) == trials, (side, len(done))
    starts = sorted(t.datetime_start.timestamp() for t in done)
    ends = sorted(t.datetime_complete.timestamp() for t in done)
    return {
        "wall_s": wall,
        "startup_s": starts[0] - t0,
        "trials_per_hour": (len(ends) - 1) / (ends[-1] - ends[0]) * 3600,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 trials x 1 epoch, 1 repeat")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.epochs, a.repeats = 4, 1, 1
    dbs = Databases(None)
    runs: dict[str, list[dict]] = {"workers": [], "ray": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.repeats):
                order = ("workers", "ray") if r % 2 == 0 else ("ray", "workers")
                for side in order:
                    fig = one_run(side, dbs, Path(tmp), a.trials, a.epochs)
                    runs[side].append(fig)
                    print(f"repeat {r} {side:7s} " + "  ".join(f"{k} {v:.1f}" for k, v in fig.items()),
                          flush=True)  # fmt: skip
    finally:
        dbs.close()

    def mean(side: str, key: str) -> tuple[float, float]:
        xs = [f[key] for f in runs[side]]
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{a.trials} trials x {a.epochs} epochs, {a.repeats} repeats")  # fmt: skip
    print("| | trials/hour after the first | start-up to first trial (s) | wall (s) |")
    print("|---|---:|---:|---:|")
    for side, label in (("workers", "`--workers 2` (baseline)"), ("ray", "`--ray local`")):
        tph, startup, wall = (mean(side, k) for k in ("trials_per_hour", "startup_s", "wall_s"))
        print(f"| {label} | {tph[0]:.0f} ± {tph[1]:.0f} | {startup[0]:.1f} ± {startup[1]:.1f} | "
              f"{wall[0]:.1f} ± {wall[1]:.1f} |")  # fmt: skip
    ratio = mean("ray", "trials_per_hour")[0] / mean("workers", "trials_per_hour")[0]
    extra = mean("ray", "startup_s")[0] - mean("workers", "startup_s")[0]
    print(f"\nRay / local launcher, trials per hour after the first: {ratio:.3f} "
          f"(goal >= 0.90); Ray's extra start-up: {extra:.1f} s")  # fmt: skip
    if a.json:
        Path(a.json).write_text(
            json.dumps({"runs": runs, "ratio": ratio, "extra_startup_s": extra})
        )


if __name__ == "__main__":
    main()
