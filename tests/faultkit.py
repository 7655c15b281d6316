"""Helpers for the fault tests: worker processes, study polling, storage parametrisation."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.report.progress import Progress
from search.store.workers import WorkerOptions

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# short heartbeats so a lost worker is noticed in seconds (the defaults are 30 s / 120 s)
FAST = ["--heartbeat", "0.5", "--grace", "2", "--threads", "1"]
FAST_OPTIONS = WorkerOptions(heartbeat=0.5, grace=2.0)


def quiet() -> Progress:
    import io

    return Progress(io.StringIO(), quiet=True)


# ``search`` with Python's own Ctrl-C handler even when the test run inherited SIGINT ignored
# (a job started with ``&`` by a non-interactive shell, as CI runners may start it): Python
# keeps an inherited SIG_IGN, and a test that sends SIGINT would then see the run go on.
_CLI_WITH_CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from search.cli import main; sys.exit(main(sys.argv[1:]))"
)


def spawn(
    args: list[str], *, storage: str, faults: str | None = None, env: dict | None = None
) -> subprocess.Popen:
    """``search <args>`` in a new process (storage URL via the environment, not argv)."""
    full_env = dict(os.environ, SEARCH_STORAGE=storage, OMP_NUM_THREADS="1")
    full_env.pop("HPSEARCH_FAULTS", None)
    if faults:
        full_env["HPSEARCH_FAULTS"] = faults
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", _CLI_WITH_CTRL_C, *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextlib.contextmanager
def injected(spec: str) -> Iterator[None]:
    """Fault hooks for ``train`` calls in this process, e.g. ``injected("oom_above=32")``."""
    from trainer import _faults

    previous = _faults.install(_faults.parse(spec))
    try:
        yield
    finally:
        _faults.install(previous)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker did not finish in {timeout}s; output:\n{out}") from None
    return proc.returncode, out


class Watch:
    """Read a study's trials from another process's storage while it runs."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._storage = None

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        try:
            if self._storage is None:
                self._storage = optuna.storages.RDBStorage(
                    self.url,
                    engine_kwargs={"pool_pre_ping": True} if "postgres" in self.url else None,
                )
            study_id = self._storage.get_study_id_from_name(self.name)
            return self._storage.get_all_trials(study_id)
        except Exception:  # not created yet, or the server is restarting: ask again later
            return []

    def running_with_epochs(self, epochs: int = 1) -> optuna.trial.FrozenTrial | None:
        for t in self.trials():
            if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epochs:
                return t
        return None

    def close(self) -> None:
        if self._storage is not None:
            self._storage.engine.dispose()


def wait_for(predicate, *, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)


def storage_param(request, tmp_path: Path) -> str:
    """URL for a ``params=["sqlite", "postgres"]`` fixture."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("pg_url")


ZONES = ["Asia/Tokyo", "America/Los_Angeles"]  # far east and west of UTC, with summer time


@contextlib.contextmanager
def time_zone(tz: str):
    """This process's local time in ``tz`` (as a worker started with ``TZ=tz`` has it)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        offset = datetime.now().astimezone().utcoffset()
        assert offset, f"no time-zone data for {tz}: install the tzdata package"
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


STORAGES = [
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
