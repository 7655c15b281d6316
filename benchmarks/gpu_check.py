"""The one-shot GPU check (issue 22): every CUDA path of the trainer and its speed, in one
command on a lent device, in under 8 minutes. Start it with ``benchmarks/gpu_check.sh run``
(which installs the carried wheels first); it prints a table and writes it, with the whole
log, under ``$OUT`` (``/tmp/gpu_check`` where OUT is not set):

1. the CUDA tests (``pytest -m cuda``): no host sync in a step, bf16 and fp16 with loss
   scaling, out-of-memory recovery, the host path, placement, the GPU share, the CUDA RNG in
   the resume state, ``train.compile``; then the CPU exactness tests on this GPU machine;
2. ``bench_trainer.py --device cuda``: ResNet-50 and ResNet-18 at 224 px and a small CNN at
   32 px, batch 256, bf16, through ``trainer.train`` against a bare loop, device and host path;
3. four small trials sharing the GPU (a quarter of its memory each) against one at a time;
4. the digits demo end to end (``search run --study digits --trials 20``; needs Optuna).

Goals on an H100/H200: the trainer at >= 0.9 of the bare loop, ResNet-50 at >= 3,000 img/s,
the host path at >= 0.85 of the device path, four sharing at >= 2.5x the trials per hour.
``python3 benchmarks/gpu_check.py shared`` runs step 3 alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # trainer, search: run from the checkout, not an install
OUT = Path(os.environ.get("OUT") or "/tmp/gpu_check")
PY = sys.executable
GOALS = {"ratio": 0.9, "resnet50": 3000.0, "host": 0.85, "shared": 2.5}
# step: seconds it may take (the whole check stays under 8 minutes)
LIMITS = {"cuda_tests": 130, "cpu_tests": 40, "bench_big": 100, "bench_small": 40, "shared": 70,
          "demo": 100}  # fmt: skip


def log(text: str) -> None:
    print(text, flush=True)
    with open(OUT / "gpu_check.log", "a") as f:
        f.write(text + "\n")


def run_step(name: str, argv: list[str]) -> tuple[str, str]:
    """Run ``argv`` with the step's time limit; (status, its output). The output goes to the
    log as it comes, so a step that hangs still shows how far it got."""
    log(f"\n===== {name}: {' '.join(argv)}")
    t0 = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            log(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = "ok"
    try:
        proc.wait(timeout=LIMITS[name])
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = f"timed out after {LIMITS[name]} s"
    reader.join(timeout=5)
    if status == "ok" and proc.returncode != 0:
        status = f"exit {proc.returncode}"
    log(f"===== {name}: {status} in {time.perf_counter() - t0:.0f} s")
    return status, "\n".join(lines)


def pytest_summary(output: str) -> str:
    found = re.findall(
        r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected)\b.*? in [\d.]+s.*?)\s*=*$",
        output,
        flags=re.M,
    )
    return found[-1] if found else "no summary"


# --------------------------------------------------------------------------- shared trials


def _trial_config(seed: int, device: str):
    from trainer import TrainConfig

    return TrainConfig.from_flat({
        "data.image_size": 32, "data.batch_size": 128, "model.backbone": "small_cnn",
        "model.width": 32, "optim.name": "adam", "train.epochs": 2, "train.patience": 0,
        "data.augment": "light", "train.seed": seed, "train.device": device,
    })  # fmt: skip


def _synthetic(n: int):
    import torch

    from trainer import ImageData

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return ImageData(x, y, x[:2000], y[:2000], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)


def worker(args: argparse.Namespace) -> None:
    """Run ``--trials`` small trials in this process with its GPU share, after a "go" line on
    stdin (all workers start together); print each trial's start and end times as JSON."""
    import trainer

    trainer.set_gpu_share(args.share)
    data = _synthetic(args.images)
    warm = _trial_config(999, args.device).replace({"train.epochs": 1})
    trainer.train(warm, data=data)  # CUDA's start and cuDNN's autotuning, untimed
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for i in range(args.trials):
        t0 = time.time()
        result = trainer.train(_trial_config(args.first + i, args.device), data=data)
        times.append((t0, time.time(), result.status))
    print(json.dumps(times), flush=True)


def _trials_per_hour(args: argparse.Namespace, workers: int, trials_each: int) -> float:
    share = 0.95 / workers  # a margin for each process's CUDA context
    procs = [
        subprocess.Popen(
            [
                PY,
                __file__,
                "worker",
                "--trials",
                str(trials_each),
                "--share",
                f"{share:.4f}",
                "--first",
                str(i * trials_each),
                "--device",
                args.device,
                "--images",
                str(args.images),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(workers)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker did not start")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        spans += json.loads(out.strip().splitlines()[-1])
    bad = [s for s in spans if s[2] != "complete"]
    if bad:
        raise RuntimeError(f"trials did not complete: {bad}")
    makespan = max(s[1] for s in spans) - min(s[0] for s in spans)
    return len(spans) / makespan * 3600


def shared(args: argparse.Namespace) -> None:
    """Trials per hour: ``--workers`` processes sharing the GPU against one at a time."""
    alone = _trials_per_hour(args, 1, args.workers * args.trials)
    together = _trials_per_hour(args, args.workers, args.trials)
    print(f"SHARED one at a time {alone:.0f} trials/h, {args.workers} sharing {together:.0f} "
          f"trials/h, {together / alone:.2f}x")  # fmt: skip


# --------------------------------------------------------------------------- the check


def check(args: argparse.Namespace) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.log").write_text("")
    t_all = time.perf_counter()
    import torch

    if not torch.cuda.is_available():
        log("no CUDA device here: the GPU check needs one")
        return 2
    name = torch.cuda.get_device_name()
    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = "missing"
    try:
        import optuna

        optuna_version = optuna.__version__
    except ImportError:
        optuna_version = "missing (carry .whl: benchmarks/gpu_check.sh fetch)"
    head = (
        f"{name} (compute capability {cap}, "
        f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), torch "
        f"{torch.__version__}, timm {timm_version}, optuna {optuna_version}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    log(head)
    rows: list[tuple[str, str, str]] = []  # (check, result, goal / verdict)

    status, out = run_step(
        "cuda_tests",
        [PY, "-m", "pytest", "-q", "-m", "cuda", "tests/trainer/test_cuda_device.py", "-rfEs"],
    )
    rows.append(("CUDA tests (`pytest -m cuda`)", pytest_summary(out), status))
    status, out = run_step(
        "cpu_tests",
        [PY, "-m", "pytest", "-q", "tests/trainer/test_steps.py",
         "tests/trainer/test_device_cache.py", "tests/trainer/test_cuda_paths.py", "-rfE"],
    )  # fmt: skip
    rows.append(("CPU exactness tests on this GPU machine", pytest_summary(out), status))

    table = OUT / "bench_rows.md"
    table.write_text("")
    bench = [PY, "benchmarks/bench_trainer.py", "--device", "cuda", "--batch-size", "256",
             "--host-path", "--out", str(table)]  # fmt: skip
    status_big, _ = run_step(
        "bench_big", [*bench, "--models", "resnet50@224,resnet18@224", "--images", "8192"]
    )
    status_small, _ = run_step(
        "bench_small", [*bench, "--models", "small_cnn@32", "--images", "65536"]
    )
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        model, size, ratio, host = cells[0], cells[1], float(cells[5]), cells[6]
        ours = float(cells[4].replace(",", ""))
        host_share = float(host.split("(")[1].rstrip(")")) if "(" in host else None
        verdict = [f"ratio {ratio:.3f} {'ok' if ratio >= GOALS['ratio'] else 'BELOW'} 0.9"]
        if model == "resnet50":
            ok = ours >= GOALS["resnet50"]
            verdict.append(f"{ours:,.0f} img/s {'ok' if ok else 'BELOW'} 3,000")
        if host_share is not None:
            ok = host_share >= GOALS["host"]
            verdict.append(f"host {host_share:.3f} {'ok' if ok else 'BELOW'} 0.85")
        rows.append((
            f"{model} {size} px, batch 256, bf16",
            f"bare {cells[3]} / trainer {cells[4]} / host {host} img/s, MFU {cells[7]}",
            "; ".join(verdict),
        ))  # fmt: skip
    if status_big != "ok" or status_small != "ok":
        rows.append(("bench_trainer.py", "incomplete", f"{status_big}, {status_small}"))

    status, out = run_step("shared", [PY, __file__, "shared", "--workers", "4", "--trials", "3"])
    got = re.search(
        r"SHARED one at a time (\d+) trials/h, 4 sharing (\d+) trials/h, ([\d.]+)x", out
    )
    if got:
        gain = float(got.group(3))
        verdict = f"{gain:.2f}x {'ok' if gain >= GOALS['shared'] else 'BELOW'} 2.5x"
        rows.append(("4 small trials sharing the GPU", f"{got.group(1)} -> {got.group(2)} trials/h",
                     verdict))  # fmt: skip
    else:
        rows.append(("4 small trials sharing the GPU", "no figure", status))

    db = Path("/tmp/gpu_check_demo.db")
    db.unlink(missing_ok=True)
    cli = "import sys; from search.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    status, out = run_step(
        "demo", [PY, "-c", cli, "run", "--study", "digits", "--trials", "20", "-q",
                 "--storage", f"sqlite:///{db}"],
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    demo = f"{status} in {seconds:.0f} s"
    if status == "ok":
        import optuna

        study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
        states = [t.state.name for t in study.trials]
        precisions = {t.user_attrs.get("precision") for t in study.trials} - {None}
        demo = (
            f"20 trials in {seconds:.0f} s ({states.count('COMPLETE')} complete, "
            f"{states.count('PRUNED')} pruned), best val_acc {study.best_value:.4f}, "
            f"precision {', '.join(sorted(precisions)) or '?'}"
        )
    rows.append(("digits demo end to end", demo, status))

    lines = [
        f"GPU check, {time.strftime('%Y-%m-%d')}: {head}; {time.perf_counter() - t_all:.0f} s",
        "",
        "| check | result | goal / status |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    (OUT / "gpu_check.md").write_text("\n".join(lines) + "\n")
    log("\n" + "\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    sub.add_parser("check", help="the whole check (the default)")
    s = sub.add_parser("shared", help="trials per hour: several sharing the GPU vs one")
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--trials", type=int, default=3, help="trials per worker")
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.add_argument("--trials", type=int, required=True)
    w.add_argument("--share", type=float, required=True)
    w.add_argument("--first", type=int, default=0)
    for sp in (s, w):
        sp.add_argument("--device", default="cuda")
        sp.add_argument("--images", type=int, default=20000, help="synthetic 32 px images")
    args = p.parse_args()
    if args.command == "shared":
        shared(args)
        return 0
    if args.command == "worker":
        worker(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
