"""``search run --workers K``: start K local worker processes and wait for them.

Each worker runs the loop of ``search.store.workers`` against the same storage; this module
only places them (a GPU each when there are GPUs, an equal share of the CPU threads) and passes
Ctrl-C and SIGTERM on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from search.store import storage as storage_mod
from search.store.workers import CHILD_ENV


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (none on a CPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:count] if count else ids
    return [str(i) for i in range(count)]


def child_argv(args: Any, *, threads: int) -> list[str]:
    """The ``search run`` command line of a worker process. The storage URL travels in the
    environment, never on a command line that ``ps`` shows to every user."""
    argv = ["run", "--study", args.study, "--worker-child"]
    if getattr(args, "profile", None):
        argv += ["--profile", args.profile]
    if args.trials is not None:
        argv += ["--trials", str(args.trials)]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    if getattr(args, "budget", None) is not None:
        argv += ["--budget", str(args.budget)]
    if getattr(args, "max_trial_minutes", None) is not None:
        argv += ["--max-trial-minutes", str(args.max_trial_minutes)]
    for item in args.set or []:
        argv += ["--set", item]
    for item in args.enqueue or []:
        argv += ["--enqueue", item]
    if args.data:
        argv += ["--data", str(Path(args.data).expanduser().resolve())]
    if args.quiet:
        argv.append("--quiet")
    argv += ["--heartbeat", str(args.heartbeat), "--retries", str(args.retries)]
    if args.grace is not None:
        argv += ["--grace", str(args.grace)]
    argv += ["--threads", str(threads)]
    return argv


def launch(args: Any, *, url: str, workers: int, stream: TextIO | None = None) -> int:
    """Start ``workers`` worker processes on this machine and wait for them. Each gets a GPU
    of its own when there are GPUs (CUDA_VISIBLE_DEVICES), and an equal share of the CPU
    threads. Ctrl-C and SIGTERM are passed on; the exit code is 130/143 then, 2 when a worker
    refused its input, 1 when the study is not full for another reason, else 0."""
    stream = stream or sys.stderr
    gpus = gpu_ids()
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    if gpus and workers > len(gpus):
        print(f"note: {workers} workers share {len(gpus)} GPU(s)", file=stream)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    lock = threading.Lock()
    received: list[int] = []

    def pump(i: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                stream.write(f"[w{i}] {storage_mod.redact(line.rstrip(), url)}\n")
                stream.flush()

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            env = dict(os.environ)
            env["SEARCH_STORAGE"] = url
            env[CHILD_ENV] = f"{i}/{workers}"
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", *child_argv(args, threads=threads)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C reaches us, and we pass it on exactly once
            )
            procs.append(proc)
            t = threading.Thread(target=pump, args=(i, proc), daemon=True)
            t.start()
            pumps.append(t)
        where = f"GPU {', '.join(gpus)}" if gpus else f"{threads} CPU thread(s) each"
        print(f"started {workers} workers ({where})", file=stream, flush=True)
        codes = [p.wait() for p in procs]
        for t in pumps:
            t.join(timeout=5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if received:
        return 130 if received[0] == signal.SIGINT else 143
    if any(c == 2 for c in codes):
        return 2
    bad = {i: c for i, c in enumerate(codes) if c != 0}
    if bad:
        text = ", ".join(
            f"w{i} " + (f"killed by {signal.Signals(-c).name}" if c < 0 else f"exit code {c}")
            for i, c in bad.items()
        )
        print(f"note: {text}", file=stream)
        return 1
    return 0


def watch_parent() -> None:
    """In a worker process: terminate (trial marked failed) if the launcher dies."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="hpsearch-parent-watch", daemon=True).start()
