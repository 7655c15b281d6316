"""``search run --ray ADDRESS``: the study's workers as Ray tasks, placed by Ray.

Ray places each worker where its resources are free (``--gpus-per-trial G`` packs 1/G workers
on a GPU, ``--cpus-per-trial C``), sets its ``CUDA_VISIBLE_DEVICES``, and tells us when a node
dies. Everything else is the same worker as ``search run --workers K`` starts on this machine:
the same command line (``search.cli.run.child_argv``), the same trial claims in the study storage, so
``--trials N`` stays exact, pruning and budgets keep working, and a lost trial is retried from
its last finished epoch by the study's own lost-trial retry (``search.store.workers``). Ray's
task retries stay off: a worker whose node died is replaced by a new Ray task, whose first
sweep fails the lost trial and re-enqueues it with its resume state.

Ray is optional (``pip install 'hpsearch[ray]'``); nothing here imports it at module level.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from search.experiments.processes import spawn_worker
from search.store import Storage
from search.store import storage as storage_mod
from search.store.workers import CHILD_ENV, GPU_SHARE_ENV, PLACEMENT_ENV

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
# environment passed on to the workers; of AWS's, where S3 is and its region, never credentials
# (each node's own environment or ~/.aws holds those)
FORWARDED = (
    "SEARCH_", "HPSEARCH_", "HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_REGION",
    "AWS_DEFAULT_REGION",
)  # fmt: skip
CANCEL_GRACE = 60.0  # seconds a cancelled worker has to mark its trial failed


@dataclass(frozen=True)
class RayOptions:
    """``--ray ADDRESS``, ``--gpus-per-trial G`` and ``--cpus-per-trial C``."""

    address: str  # "local" (a private Ray on this machine), "auto", "host:port", "ray://..."
    gpus_per_trial: float | None = None  # None: 1 on a cluster with GPUs, else 0
    cpus_per_trial: float = 1.0

    def __post_init__(self) -> None:
        if not self.address or not self.address.strip():
            raise ValueError("--ray needs an address: local, auto, HOST:PORT or ray://HOST:PORT")
        g = self.gpus_per_trial
        if g is not None:
            if not (isinstance(g, int | float) and math.isfinite(g) and 0 < g <= 1):
                raise ValueError(
                    f"--gpus-per-trial must be in (0, 1] (a share of one GPU), but got {g}; "
                    "a trial uses at most one GPU"
                )
            if abs(1 / g - round(1 / g)) > 1e-3:
                raise ValueError(
                    f"--gpus-per-trial {g} does not divide a GPU evenly; use 1/k "
                    "(1, 0.5, 0.25, 0.2, ...) so that k trials share each GPU"
                )
        c = self.cpus_per_trial
        if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
            raise ValueError(f"--cpus-per-trial must be > 0, but got {c}")


def check_storage(storage: Storage) -> None:
    """Workers on a Ray cluster write the study from several processes (and machines)."""
    if storage.is_sqlite:
        raise ValueError(
            "--ray needs PostgreSQL: its workers write the study from several processes and "
            "machines, and SQLite lets one process write at a time; pass "
            "--storage postgresql+psycopg://USER@HOST:5432/DB (see docs/distributed.md)"
        )


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--ray needs Ray, which is not installed: pip install 'hpsearch[ray]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """A ``host:port`` or ``ray://host:port`` that nothing answers on: one line, at once
    (``ray.init`` would retry for a minute)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        if address.startswith("ray://"):
            raise ValueError(f"--ray {address}: expected ray://HOST:PORT")
        raise ValueError(f"--ray {address}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ValueError(
            f"no Ray cluster reachable at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head`, or pass --ray local to start a private one here"
        ) from None


def check_address(options: RayOptions) -> None:
    """What can be told before anything is loaded: Ray is installed, and a ``HOST:PORT`` or
    ``ray://`` address answers."""
    _import_ray()
    if options.address not in ("local", "auto"):
        _check_reachable(options.address)


def connect(options: RayOptions) -> Any:
    """Connect to (or, for ``local``, start) Ray; returns the ``ray`` module."""
    ray = _import_ray()
    common = {"log_to_driver": False, "logging_level": "WARNING", "ignore_reinit_error": True}
    if options.address == "local":
        # A private Ray on this machine talks over loopback only: it has no reason to bind
        # the machine's network address (``_node_ip_address`` has no public equivalent in
        # ray.init; ``ray start --node-ip-address`` is the CLI's).
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        return ray
    try:
        ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"no Ray cluster reachable at {options.address} ({first}); start one with "
            "`ray start --head`, or pass --ray local to start a private one here"
        ) from None
    return ray


def slots(resources: dict[str, float], options: RayOptions) -> tuple[int, float]:
    """How many workers the cluster runs at once, and the GPU share each requests."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    share = (options.gpus_per_trial or 1.0) if gpus > 0 else 0.0
    by_cpu = math.floor(cpus / options.cpus_per_trial + 1e-9)
    n = min(by_cpu, math.floor(gpus / share + 1e-9)) if share else by_cpu
    if n < 1:
        raise ValueError(
            f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s); a trial needs "
            f"{options.cpus_per_trial:g} CPU(s)"
            + (f" and {share:g} GPU" if share else "")
            + ": lower --cpus-per-trial or add nodes"
        )
    return n, share


def check_artifacts_visible(ray: Any, root: Path) -> None:
    """Every node must see the checkpoints and resume states under ``root`` (a retried trial
    resumes on another node): a file written here must exist there."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".hpsearch-probe-{uuid.uuid4().hex}"
    probe.write_text("hpsearch\n")
    try:
        exists = ray.remote(num_cpus=0)(os.path.exists)
        refs = {
            n["NodeManagerAddress"]: exists.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(probe))
            for n in nodes
        }
        blind = [ip for ip, ref in refs.items() if not ray.get(ref, timeout=60)]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ValueError(
            f"the checkpoint folder {root} is not visible on node(s) {', '.join(blind)}: a "
            "trial moved there could not resume; pass --artifacts with a folder every node "
            "mounts (NFS), or set SEARCH_ARTIFACTS"
        )


def _prepare_child() -> None:  # pragma: no cover - runs in the child before exec
    """In the worker process, before it starts: Ctrl-C handling as in a shell (a Ray worker
    ignores or blocks SIGINT, and both stay so across exec), so a cancelled task's SIGINT
    marks the trial failed; and death with its Ray task (a removed node kills the task), so
    the trial stays RUNNING and the replacement worker retries it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _next_line(lines: queue.Queue) -> str | None:
    """The next line, "" when none came within half a second, None at the end."""
    try:
        line = lines.get(timeout=0.5)
    except queue.Empty:
        return ""
    return line if line is None else line or " "


def _worker(argv: list[str], env: dict[str, str], gpu_share: float):
    """Runs on a Ray node: one ``search run --worker-child`` process; yields its lines, then
    ``("exit", code)``. Cancelled (Ctrl-C on the driver), it passes SIGINT on, so the child
    marks its trial failed with the reason, as a local worker does."""
    import ray

    ctx = ray.get_runtime_context()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    where = f"node {ctx.get_node_id()[:8]} ({ray.util.get_node_ip_address()})"
    env = {**os.environ, **env, PLACEMENT_ENV: where + (f" GPU {','.join(gpus)}" if gpus else "")}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if gpu_share < 1:
            env[GPU_SHARE_ENV] = f"{gpu_share:g}"
    proc = spawn_worker(argv, env, preexec_fn=_prepare_child)
    try:
        yield ("start", (env[PLACEMENT_ENV], proc.pid))
        # Lines are read in a thread: a cancelled task is interrupted only while it runs Python,
        # never inside a blocking read, so the loop below waits in short, interruptible steps.
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (line := _next_line(lines)) is not None:
            if line:
                yield ("line", line)
        yield ("exit", proc.wait())
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def launch_ray(
    ray: Any,
    worker_argv: Callable[[int], list[str]],
    *,
    url: str,
    options: RayOptions,
    remaining: int | None,
    artifacts: Path | str,
    on_lost: Callable[[str, int, str], Any] = lambda placement, pid, why: None,
    stream: TextIO | None = None,
) -> int:
    """Run the study's workers on Ray (``ray``, from ``connect``) until they stop; the exit
    code as ``launcher.launch`` gives it (130 on Ctrl-C, 2 when a worker refused its input, 1
    when one failed). ``artifacts`` is the checkpoint folder (``check_artifacts_visible``).
    ``worker_argv(threads)`` is a worker's ``search run`` command line, asked for once Ray is
    up (what is left of a wall-clock budget is counted then). ``on_lost(placement, pid, why)``
    is called for a worker whose task Ray lost (its node died), before its replacement starts.
    """
    stream = stream or sys.stderr
    try:
        n, share = slots(ray.cluster_resources(), options)
        if options.gpus_per_trial and not share:
            print("note: the Ray cluster has no GPU; trials run on CPUs", file=stream)
        workers = min(n, remaining) if remaining is not None else n
        threads = max(1, math.floor(options.cpus_per_trial))
        task = ray.remote(_worker).options(
            num_cpus=options.cpus_per_trial,
            num_gpus=share,
            max_retries=0,  # a lost worker is replaced here, and its trial retried by the study
            num_returns="streaming",
        )
        return _drive(ray, task, worker_argv(threads), url=url, workers=workers, threads=threads,
                      share=share, artifacts=artifacts, on_lost=on_lost, stream=stream)  # fmt: skip
    finally:
        ray.shutdown()


def _drive(ray, task, argv, *, url, workers, threads, share, artifacts, on_lost, stream) -> int:
    events: queue.Queue = queue.Queue()
    lock = threading.Lock()
    gens: dict[int, Any] = {}
    started: dict[int, tuple[str, int]] = {}  # worker -> (placement, pid of its process)

    def say(text: str) -> None:
        with lock:
            stream.write(storage_mod.redact(text, url) + "\n")
            stream.flush()

    def pump(i: int, gen: Any) -> None:
        try:
            for ref in gen:
                kind, value = ray.get(ref)
                if kind == "start":
                    started[i] = value
                    say(f"[w{i}] on {value[0]}")
                elif kind == "line":
                    say(f"[w{i}] {value}")
                else:
                    events.put(("exit", i, value))
                    return
            events.put(("exit", i, 1))
        except Exception as exc:  # the node died, the worker crashed, or it was cancelled
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            events.put(("lost", i, f"{type(exc).__name__}: {first}"))

    # hpsearch's own settings of this command (study folders, the decode cache, offline hub)
    # reach every worker; what is set below wins
    forwarded = {
        k: v for k, v in os.environ.items() if k.startswith(FORWARDED) and k != "SEARCH_STORAGE"
    }

    def start(i: int) -> None:
        env = {
            **forwarded,
            "SEARCH_STORAGE": url,
            "SEARCH_ARTIFACTS": str(artifacts),
            CHILD_ENV: f"{i}/{workers}",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        gens[i] = task.remote(argv, env, share)
        threading.Thread(target=pump, args=(i, gens[i]), daemon=True).start()

    for i in range(workers):
        start(i)
    where = f"{share:g} GPU and " if share else ""
    say(f"started {workers} workers on Ray ({where}{threads} CPU thread(s) each)")
    running, codes, replacements, nxt = set(range(workers)), {}, 0, workers
    try:
        while running:
            kind, i, value = events.get()
            running.discard(i)
            if kind == "exit":
                codes[i] = value
                continue
            if i in started:  # its trial is retried now, not after the heartbeat grace
                on_lost(*started[i], f"its Ray task was lost ({value})")
            if replacements >= max(2, workers):
                say(f"note: w{i} lost ({value}); no more replacements")
                codes[i] = 1
                continue
            replacements += 1
            say(f"note: w{i} lost ({value}); w{nxt} takes over, and its trial resumes "
                "from its last finished epoch")  # fmt: skip
            start(nxt)
            running.add(nxt)
            nxt += 1
    except KeyboardInterrupt:
        # each worker gets SIGINT (its task's finally) and marks its trial failed with the
        # reason, as a local worker does; wait for that before Ray goes away with them
        for i in running:
            with contextlib.suppress(Exception):  # already ended
                ray.cancel(gens[i])
        deadline = time.monotonic() + CANCEL_GRACE
        while running and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty, KeyboardInterrupt):
                running.discard(events.get(timeout=1.0)[1])
        return EXIT_INTERRUPTED
    if any(c == EXIT_USAGE for c in codes.values()):
        return EXIT_USAGE
    bad = {i: c for i, c in codes.items() if c != 0}
    if bad:
        say("note: " + ", ".join(f"w{i} exit code {c}" for i, c in sorted(bad.items())))
        return 1
    return 0


__all__ = [
    "GPU_SHARE_ENV",
    "PLACEMENT_ENV",
    "RayOptions",
    "check_address",
    "check_artifacts_visible",
    "check_storage",
    "connect",
    "launch_ray",
    "slots",
]
