"""Workers: claim trial slots in the database, keep a heartbeat, retry lost trials. The local
launcher (``search run --workers K``) is ``search.experiments.launcher``.

Every worker, local or on another machine, runs the same loop against the same storage:

1. Sweep: a RUNNING trial whose worker process on this machine no longer exists (at once), or
   whose heartbeat is older than the grace period (a worker elsewhere that died or froze), is
   lost. Mark it FAIL (status ``lost``) and enqueue its parameters again, at most
   ``max_retries`` times, pointing at its last epoch state so the retry resumes there.
2. Claim: under a lock every worker respects (``Storage.exclusive``), count finished (complete
   + pruned) and running trials; start one only if finished + running < N. That makes
   ``--trials N`` exact: no worker can start the trial that would make N + 1.
3. Run it with a heartbeat thread; a result for a trial that was meanwhile failed by a sweep
   (this worker was paused past the grace period) is discarded, never counted twice.

Optuna's own heartbeat (``RDBStorage(heartbeat_interval=...)``) starts its thread only inside
``study.optimize`` and stops beating after the first database error; ours keeps beating through
a database restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.store import FINISHED, REFIT_ATTR
from search.store import _optuna_internals as _internals
from search.store import artifacts as _artifacts
from search.store import storage as storage_mod
from search.store.storage import Storage

log = logging.getLogger("hpsearch")
DEFAULT_HEARTBEAT = 30.0  # seconds between heartbeats of a running trial
DEFAULT_RETRIES = 2  # times a lost trial's parameters are run again
CHILD_ENV = "HPSEARCH_WORKER"  # "i/K" in a worker process started by --workers K


class Claim(StrEnum):
    """What ``SlotClaimer.claim`` answers when it starts no trial."""

    FULL = "done"  # the study holds its N finished trials: this worker is done
    WAIT = "wait"  # the rest of the N is running elsewhere; one of those may still fail


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat: float = DEFAULT_HEARTBEAT
    grace: float | None = None  # default: 4 heartbeats
    max_retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if not self.heartbeat > 0:
            raise ValueError(f"--heartbeat must be > 0 seconds, but got {self.heartbeat}")
        if self.grace is not None and not self.grace > self.heartbeat:
            raise ValueError(
                f"--grace must be longer than the heartbeat ({self.heartbeat} s), "
                f"but got {self.grace}"
            )
        if self.max_retries < 0:
            raise ValueError(f"--retries must be >= 0, but got {self.max_retries}")

    @property
    def grace_period(self) -> float:
        return self.grace if self.grace is not None else 4 * self.heartbeat

    @property
    def poll(self) -> float:
        """How often a worker with nothing to claim looks again."""
        return max(0.2, min(self.heartbeat, 5.0))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Where an engine placed this worker ("node 1a2b3c4d (10.0.0.7) GPU 0"); set by the Ray
# launcher for each worker it starts, stored with each trial as its user attribute placement.
PLACEMENT_ENV = "HPSEARCH_PLACEMENT"
# The share of its GPU's memory a worker may use, when several share one GPU (--workers K on
# fewer GPUs, --ray --gpus-per-trial 0.25): the worker passes it to trainer.set_gpu_share.
GPU_SHARE_ENV = "HPSEARCH_GPU_SHARE"
WORKER_ATTR = "hpsearch:worker"  # trial system attribute: the process that runs the trial
# (storage URL, trial id) of the trials claimed by this process: ids repeat across storages
_CLAIMED_HERE: set[tuple[str, int]] = set()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_state(pid: int) -> tuple[bool, int | None]:
    """(exists, start time in clock ticks after boot, where /proc tells it). A killed process
    its parent has not yet reaped (a zombie) does not exist."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass  # another user's process: it exists
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:  # no /proc (macOS), or hidden from us: alive, start unknown
        return True, None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False, None
    return True, int(fields[19])


def this_process() -> dict[str, Any]:
    """This process, as stored with each trial it runs. Host name, boot and pid namespace
    together say whether another process can see the same pids; the start time tells a
    reused pid from the original process."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
        "start": _process_state(os.getpid())[1],
    }


def process_gone(info: dict[str, Any]) -> bool:
    """True only when the process ``info`` (from ``this_process``) ran where this one runs
    and certainly no longer exists. A process on another machine, another boot or in another
    pid namespace (a container sharing the host name) is never judged: its heartbeat is."""
    me = this_process()
    if any(info.get(k) != me[k] for k in ("host", "boot", "pidns")):
        return False
    try:
        pid, start = int(info["pid"]), info.get("start")
    except (KeyError, TypeError, ValueError):
        return False
    if pid == me["pid"] and (start is None or start == me["start"]):
        return False  # this very process (the caller knows its own trials)
    exists, now_start = _process_state(pid)
    if not exists:
        return True
    # the pid is taken by another process (reused) when its start time differs
    return start is not None and now_start is not None and now_start != start


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread, through database
    outages (an error is logged once and the next beat tries again)."""

    def __init__(self, storage: Storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpsearch-heartbeat", daemon=True)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.storage.rdb.record_heartbeat(self.trial_id)
                if failing:
                    log.warning("heartbeat of trial id %d recorded again", self.trial_id)
                failing = False
            except Exception as exc:  # the database is restarting: beat again next time
                if not failing:
                    log.warning(
                        "could not record the heartbeat of trial id %d: %s",
                        self.trial_id,
                        self.storage.error_line(exc),
                    )
                failing = True

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval))


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let the clean-up after a Ctrl-C or SIGTERM finish before a second signal lands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def interruption_reason(exc: BaseException) -> str:
    """The reason stored with a trial that Ctrl-C or SIGTERM (``search.cli.Terminated``,
    which carries its own reason) interrupted."""
    return getattr(exc, "reason", "interrupted by the user (Ctrl-C)")


def mark_interrupted(trial: optuna.Trial, exc: BaseException) -> None:
    """Record that a RUNNING trial was interrupted, whatever it had recorded before (a signal
    that lands after training but before the trial is told leaves the training's status)."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("reason", interruption_reason(exc))


def _remote_move(last: Path, kept: Path) -> str | None:
    """In the bucket: the failed trial's last state copied to the key of ``kept`` (its worker,
    if alive, can no longer delete it), the original removed; the new URL, or None when the
    trial left no state there."""
    src, dst = (str(_artifacts.S3Url.of_local(p)) for p in (last, kept))
    try:
        if _artifacts.exists(src):
            _artifacts.copy(src, dst)
            _artifacts.remove(src)
        return dst if _artifacts.exists(dst) else None
    except Exception as exc:  # S3 unreachable: the retry starts from epoch 1
        log.warning("could not keep the resume state of %s in S3: %s", last.name, exc)
        return None


class SlotClaimer:
    """Claims trial slots of one study so that exactly ``n_trials`` finish, across processes
    and machines, and fails and re-enqueues trials whose worker stopped beating."""

    def __init__(
        self,
        study: optuna.Study,
        *,
        storage: Storage,
        n_trials: int,
        options: WorkerOptions,
        checkpoint_dir: Path | None = None,
        say=None,
        url: str | None = None,
    ) -> None:
        # ``url``: what callers passed before the storage object carried it; must agree
        if url is not None and storage_mod.resolve_url(url) != storage.url:
            raise ValueError(f"SlotClaimer: url {storage_mod.mask_url(url)!r} is not {storage!r}")
        self.study, self.storage, self.rdb = study, storage, storage.rdb
        self.n_trials, self.options = n_trials, options
        self.checkpoint_dir = checkpoint_dir
        self.say = say or (lambda text: log.warning(text))
        self.study_id = self.rdb.get_study_id_from_name(study.study_name)
        self._ids: dict[int, int] = {}  # trial number -> trial id, of the trials claimed here

    @property
    def url(self) -> str:
        """The storage's URL: with the trial id, what names a trial across storages."""
        return self.storage.url

    def trial_id(self, trial: optuna.Trial) -> int:
        """The storage id of a trial (Optuna's ``Trial`` keeps it private; the storage has a
        public lookup by study and number)."""
        tid = self._ids.get(trial.number)
        if tid is None:
            tid = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self._ids[trial.number] = tid
        return tid

    # -- counting -------------------------------------------------------------------------
    @storage_mod._retrying
    def counts(self) -> dict[TrialState, int]:
        """Search trials of the study per state, refits left out (retried while the database
        is away)."""
        with self.storage.engine.connect() as conn:
            return self._count(conn)

    def _count(self, conn: Any) -> dict[TrialState, int]:
        # refits are trials beyond the N: they never fill a slot
        return _internals.count_by_state(conn, self.study_id, unless_attr=REFIT_ATTR)

    @staticmethod
    def finished(counts: dict[TrialState, int]) -> int:
        return sum(counts[state] for state in FINISHED)

    # -- claiming -------------------------------------------------------------------------
    def claim(self) -> optuna.Trial | Claim:
        """A new RUNNING trial (a re-enqueued one first), or ``Claim.FULL`` (N finished), or
        ``Claim.WAIT`` (the rest of the N trials is running elsewhere)."""
        self.sweep()
        trial = None
        hold = max(30.0, 2 * self.options.grace_period)
        try:
            with self.storage.exclusive(
                f"claim:{self.study.study_name}", hold_limit=hold, pooled=True
            ) as conn:
                counts = self._count(conn) if conn is not None else self.counts()
                done = self.finished(counts)
                if done >= self.n_trials:
                    return Claim.FULL
                if done + counts[TrialState.RUNNING] >= self.n_trials:
                    return Claim.WAIT
                trial = self.study.ask()
                tid = self.trial_id(trial)
                _CLAIMED_HERE.add((self.url, tid))
                self.rdb.record_heartbeat(tid)
                # Who runs it, precisely enough that a worker on this machine can tell at once
                # when that process is gone (a trial without it waits for the grace period).
                self.rdb.set_trial_system_attr(tid, WORKER_ATTR, this_process())
                if conn is not None:
                    conn.execute(sqlalchemy.text("SELECT 1"))  # still holding the lock?
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while claiming
            if trial is not None:  # claimed, never started: leave no trial RUNNING
                with signals_ignored():
                    self._fail(self.trial_id(trial), "interrupted", interruption_reason(exc))
            raise
        except Exception as exc:
            if trial is None:
                if self.storage.transient(exc):
                    return Claim.WAIT  # the database went away while we counted: look again
                raise
            # The lock connection died while we created the trial, so another worker may
            # have claimed concurrently: give ours back if the trial count is now overdrawn.
            counts = self.counts()
            if self.finished(counts) + counts[TrialState.RUNNING] > self.n_trials:
                self._fail(self.trial_id(trial), "lost", "claimed while the database "
                           "restarted; over the trial budget, so not run")  # fmt: skip
                return Claim.WAIT
        return trial

    # -- lost workers ---------------------------------------------------------------------
    @staticmethod
    def _db_now(conn: Any) -> datetime:
        """The database's clock, as naive UTC (SQLite's CURRENT_TIMESTAMP is UTC; our
        PostgreSQL sessions run in UTC, see ``storage._engine_kwargs``)."""
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return now.replace(tzinfo=None)

    @storage_mod._retrying
    def stale(self) -> list[tuple[int, int, str]]:
        """(trial id, number, why) of RUNNING trials whose worker is gone: a process of this
        machine that no longer exists (at once), or a worker that stopped beating (after the
        grace period)."""
        grace = self.options.grace_period
        with self.storage.engine.connect() as conn:
            now = self._db_now(conn)
            rows = _internals.running_heartbeats(conn, self.study_id)
        out = []
        for trial_id, number, beat in rows:
            gone = self._local_worker_gone(trial_id)
            if gone:
                out.append((trial_id, number, gone))
            elif beat is not None:
                if isinstance(beat, str):
                    beat = datetime.fromisoformat(beat)
                age = (now - beat.replace(tzinfo=None)).total_seconds()
                if age > grace:
                    out.append(
                        (trial_id, number, f"no heartbeat for {age:.0f} s (grace {grace:g} s); "
                         "the worker was killed, crashed or froze")
                    )  # fmt: skip
            else:  # left RUNNING by a run without heartbeat (an older version, a crash)
                started = self.rdb.get_trial(trial_id).datetime_start
                # Optuna hands it out as naive local time (or aware): compare in UTC
                if started is not None and datetime.now(UTC) - started.astimezone(UTC) > timedelta(
                    seconds=2 * grace + 60
                ):
                    out.append((trial_id, number, "left running without a heartbeat"))
        return out

    def release(self, trial_id: int) -> None:
        """This process is done with the trial (finished, or dropped as a late result)."""
        _CLAIMED_HERE.discard((self.url, trial_id))

    def _local_worker_gone(self, trial_id: int) -> str | None:
        """Why the trial's worker is certainly dead, if it ran on this machine; else None."""
        if (self.url, trial_id) in _CLAIMED_HERE:
            return None  # ours (a thread of this process runs it)
        info = self.rdb.get_trial_system_attrs(trial_id).get(WORKER_ATTR)
        if not isinstance(info, dict) or not process_gone(info):
            return None
        return f"worker {info.get('host')}:{info.get('pid')} is gone (process no longer exists)"

    def sweep(self) -> list[int]:
        """Fail trials of dead or frozen workers and enqueue their retries; their numbers."""
        return [number for tid, number, why in self.stale() if self._lose(tid, number, why)]

    def lose_worker(self, *, placement: str, pid: int, why: str) -> list[int]:
        """Fail, at once, the RUNNING trials of a worker an engine knows is dead (``pid`` at
        ``placement``, whose node Ray lost), and enqueue their retries; their numbers. Without
        this, a worker on another node would wait for the grace period to judge them."""
        lost = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tid = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
            info = self.rdb.get_trial_system_attrs(tid).get(WORKER_ATTR) or {}
            if t.user_attrs.get("placement") == placement and info.get("pid") == pid:
                if self._lose(tid, t.number, why):
                    lost.append(t.number)
        return lost

    def _lose(self, trial_id: int, number: int, why: str) -> bool:
        reason = f"worker lost: {why}"
        if not self._fail(trial_id, "lost", reason):
            return False
        retry = self.retry(self.rdb.get_trial(trial_id), reason)
        self.say(
            f"trial {number} {reason}"
            + (f"; retrying its parameters{retry}" if retry is not None else "")
        )
        return True

    def _fail(self, trial_id: int, status: str, reason: str) -> bool:
        """Move a RUNNING trial to FAIL and record why; False if it had already finished."""
        try:
            if not self.rdb.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        self._write_attrs(trial_id, {"status": status, "reason": reason})
        return True

    @storage_mod._retrying
    def _write_attrs(self, trial_id: int, values: dict[str, Any]) -> None:
        # only the worker that failed the trial writes these
        _internals.write_finished_trial_attrs(self.storage.engine, trial_id, values)

    def retry(self, failed: FrozenTrial, reason: str) -> str | None:
        """Enqueue ``failed``'s parameters again (bounded); a description, or None."""
        history = [*failed.user_attrs.get("retry_history", []), failed.number]
        if len(history) > self.options.max_retries:
            self.say(
                f"trial {failed.number} is not retried: its parameters already ran "
                f"{len(history)} times (--retries {self.options.max_retries})"
            )
            return None
        resume = self._resume_file(failed)
        attrs: dict[str, Any] = {
            "retry_of": history[0],
            "retry_history": history,
            "retry_reason": reason,
        }
        if resume:
            attrs["resume_from"] = resume
        if "enqueued" in failed.user_attrs:
            attrs["enqueued"] = failed.user_attrs["enqueued"]
        params = dict(failed.user_attrs.get("enqueued") or {})
        params.update(failed.params)
        self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        return f" (retry {len(history)} of {self.options.max_retries}" + (
            ", from its last epoch)" if resume else ")"
        )

    def _resume_file(self, failed: FrozenTrial) -> str | None:
        """The failed trial's last epoch state, moved aside so its own (maybe still alive)
        worker cannot delete it; else the state it had itself resumed from."""
        if self.checkpoint_dir is not None:
            last = self.checkpoint_dir / f"trial-{failed.number}.last.safetensors"
            kept = self.checkpoint_dir / f"trial-{failed.number}.resume.safetensors"
            if self.storage.remote_artifacts:  # in the bucket (search.store.artifacts)
                moved = _remote_move(last, kept)
                if moved:
                    return moved
            else:
                with contextlib.suppress(OSError):
                    last.replace(kept)
                if kept.exists():
                    return str(kept)
        # passed on even when gone: the trainer then notes it and starts from epoch 1
        return failed.user_attrs.get("resume_from")
