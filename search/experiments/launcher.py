"""``search run --workers K``: start K local worker processes and wait for them.

Each worker runs the loop of ``search.store.workers`` against the same storage; this module
creates the study first, places the workers (a GPU each when there are GPUs, an equal share of
the CPU threads), passes Ctrl-C and SIGTERM on, and says whether the study got full. A worker's
command line comes from the CLI (``search.cli.run.child_argv``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from search import exit_codes
from search.experiments.processes import spawn_worker
from search.experiments.run import UNLIMITED, Plan, prepare_study
from search.report.summary import print_summary
from search.store import Storage
from search.store import storage as storage_mod
from search.store.workers import CHILD_ENV, GPU_SHARE_ENV, SlotClaimer, WorkerOptions
from search.study.budget import RunLimits
from trainer.device import available_cpus

if TYPE_CHECKING:
    from search.experiments.ray_launcher import RayOptions


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


def run_workers(
    plan: Plan,
    *,
    ray: RayOptions | None = None,
    workers: int,
    trials: int | None,
    timeout: float | None,
    limits: RunLimits,
    started: float,
    threads: int | None,
    worker_argv: Callable[..., list[str]],
) -> int:
    """``search run --workers K``: create the study here, then K worker processes fill it.

    ``worker_argv(threads=N, budget=...)`` is a worker's ``search run`` command line, given
    the values that differ from this command's: each worker's share of the CPU threads, and
    what is left of the wall clock (``limits.wall_seconds``, when there is one) by the time
    they start. ``started`` is when the wall clock began (``time.monotonic()``). With ``ray``,
    Ray places the workers instead (``search.experiments.ray_launcher``) and decides how many
    run at once. The exit code as the CLI's.
    """
    session = None
    if ray is not None:  # no Ray at the address: refused before the study is created
        from search.experiments.ray_launcher import check_artifacts_visible, connect

        session = connect(ray)
        if not plan.storage.remote_artifacts:  # a bucket: every node reaches it
            check_artifacts_visible(session, plan.storage.artifact_root.resolve())
    storage, study = prepare_study(plan)
    claimer = SlotClaimer(
        study,
        storage=storage,
        n_trials=trials if trials is not None else UNLIMITED,
        options=WorkerOptions(),
        # where a lost worker's epoch state is, for a retry that the launcher itself enqueues
        checkpoint_dir=storage.checkpoint_dir(plan.spec.name),
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    done = claimer.finished(claimer.counts())
    print(
        f"study {plan.spec.name!r}: {done}"
        + (f" of {trials}" if trials is not None else "")
        + f" trials finished; storage {storage.masked}",
        file=sys.stderr,
    )

    def argv_for(threads: int) -> list[str]:
        overrides: dict[str, Any] = {"threads": threads}
        if limits.wall_seconds is not None:  # the workers get what is left of this command's
            left = limits.wall_seconds - (time.monotonic() - started)
            overrides["budget"] = f"{max(1.0, left):.1f}"
        return worker_argv(**overrides)

    if ray is not None:
        from search.experiments.ray_launcher import launch_ray

        code = launch_ray(
            session,
            argv_for,
            url=plan.url,
            options=ray,
            remaining=None if trials is None else max(1, trials - done),
            artifacts=plan.storage.remote_artifacts or plan.storage.artifact_root.resolve(),
            on_lost=lambda placement, pid, why: claimer.lose_worker(
                placement=placement, pid=pid, why=why
            ),
        )
    else:
        share = threads or max(1, available_cpus() // workers)
        code = launch(argv_for(share), storage=storage, workers=workers, threads=share)
    if code in (exit_codes.USAGE, exit_codes.INTERRUPTED, exit_codes.TERMINATED):
        if code != exit_codes.USAGE:
            print("\nstopped: running trials are marked failed; rerun to go on", file=sys.stderr)
        return code
    done = claimer.finished(claimer.counts())
    if trials is not None and done < trials and timeout is None and not limits.wall_seconds:
        msg = f"error: the study holds {done} of {trials} finished trials; rerun to go on"
        print(msg, file=sys.stderr)
        return 1
    print_summary(study, storage)
    return 0


def launch(
    argv: list[str], *, storage: Storage, workers: int, threads: int, stream: TextIO | None = None
) -> int:
    """Start ``workers`` processes of ``search <argv>`` on this machine and wait for them.
    Each gets a GPU of its own when there are GPUs (CUDA_VISIBLE_DEVICES), ``threads`` CPU
    threads, and the storage's URL in its environment (never on a command line, which ``ps``
    shows to every user). Ctrl-C and SIGTERM are passed on; the exit code is 130/143 then, 2
    when a worker refused its input, 1 when the study is not full for another reason, else 0."""
    stream = stream or sys.stderr
    gpus = gpu_ids()
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
                stream.write(f"[w{i}] {storage_mod.redact(line.rstrip(), storage.url)}\n")
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
            env["SEARCH_STORAGE"] = storage.url
            env[CHILD_ENV] = f"{i}/{workers}"
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
                sharing = len(range(i % len(gpus), workers, len(gpus)))  # workers on this GPU
                if sharing > 1:  # each gets its share of the card's memory, not all of it
                    env[GPU_SHARE_ENV] = f"{1 / sharing:.6g}"
            # a session of its own: Ctrl-C reaches us, and we pass it on exactly once
            proc = spawn_worker(argv, env, start_new_session=True)
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
        return exit_codes.INTERRUPTED if received[0] == signal.SIGINT else exit_codes.TERMINATED
    if any(c == exit_codes.USAGE for c in codes):
        return exit_codes.USAGE
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
