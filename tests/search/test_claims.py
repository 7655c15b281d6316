"""The lost-trial retry, in one process: what a retry carries over from the trial it replaces,
where its resume state comes from, the bound on retries, a worker an engine reports dead, the
heartbeat thread, and the reason an interrupted trial records. (The same paths run across real
processes in test_faults.py; these pin each attribute fast enough for the mutation run.)"""

from __future__ import annotations

import os
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.store import Storage
from search.store.workers import (
    Claim,
    Heartbeat,
    SlotClaimer,
    WorkerOptions,
    interruption_reason,
    mark_interrupted,
    process_gone,
    this_process,
)

PLACE = "node 1a2b3c4d (10.0.0.7) GPU 0"


@pytest.fixture
def claimer(tmp_path):
    """(claimer, study, messages) on a fresh SQLite study, checkpoints in tmp_path/ckpt."""
    storage = Storage.open(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage.rdb, direction="maximize")
    said: list[str] = []
    (tmp_path / "ckpt").mkdir()
    claims = SlotClaimer(
        study, storage=storage, n_trials=5, options=WorkerOptions(max_retries=2),
        checkpoint_dir=tmp_path / "ckpt", say=said.append,
    )  # fmt: skip
    return claims, study, said


def running(claims: SlotClaimer, *, placement: str = PLACE) -> optuna.Trial:
    trial = claims.claim()
    assert not isinstance(trial, Claim)
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("placement", placement)
    return trial


def until(done, timeout: float = 30.0) -> None:
    """Wait for a condition the heartbeat thread makes true (however loaded the machine)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the heartbeat thread did not beat"
        time.sleep(0.02)


def waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_a_lost_worker_fails_its_trial_at_once_and_the_retry_resumes_from_its_kept_state(
    claimer, tmp_path
):
    claims, study, said = claimer
    trial = running(claims)
    other = running(claims, placement="node 9f9f9f9f (10.0.0.8) GPU 1")
    last = tmp_path / "ckpt" / f"trial-{trial.number}.last.safetensors"
    last.write_bytes(b"state after epoch 2")

    lost = claims.lose_worker(placement=PLACE, pid=os.getpid(), why="its Ray task was lost")
    assert lost == [trial.number]
    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert states[trial.number].state == TrialState.FAIL
    assert states[trial.number].user_attrs["status"] == "lost"
    assert states[trial.number].user_attrs["reason"] == "worker lost: its Ray task was lost"
    assert states[other.number].state == TrialState.RUNNING  # another worker's: untouched
    (retry,) = waiting(study)
    kept = tmp_path / "ckpt" / f"trial-{trial.number}.resume.safetensors"
    assert retry.user_attrs == {
        "retry_of": trial.number,
        "retry_history": [trial.number],
        "retry_reason": "worker lost: its Ray task was lost",
        "resume_from": str(kept),
    }
    assert retry.system_attrs["fixed_params"] == {"x": trial.params["x"]}
    # moved aside, so that the lost worker, if it still ran, cannot delete it
    assert kept.read_bytes() == b"state after epoch 2" and not last.exists()
    assert said == [
        f"trial {trial.number} worker lost: its Ray task was lost; retrying its parameters "
        "(retry 1 of 2, from its last epoch)"
    ]
    # the same worker reported again: nothing left to lose; a wrong pid: not its trials
    assert claims.lose_worker(placement=PLACE, pid=os.getpid(), why="again") == []
    assert claims.lose_worker(placement=other.user_attrs["placement"], pid=1, why="x") == []


def test_a_retry_keeps_the_enqueued_values_and_a_retry_of_a_retry_its_inherited_state(
    claimer, tmp_path
):
    claims, study, said = claimer
    study.enqueue_trial({"x": 0.25}, user_attrs={"enqueued": {"x": 0.25, "train.seed": 7}})
    trial = running(claims)
    inherited = tmp_path / "ckpt" / "trial-9.resume.safetensors"  # what it had resumed from
    inherited.write_bytes(b"older state")
    trial.set_user_attr("resume_from", str(inherited))
    trial.set_user_attr("retry_history", [9])  # it was itself the retry of a trial 9
    study.tell(trial, state=TrialState.FAIL)

    failed = study.get_trials(deepcopy=False)[-1]
    assert claims.retry(failed, "its worker stopped beating") == (
        " (retry 2 of 2, from its last epoch)"
    )
    (retry,) = waiting(study)
    assert retry.user_attrs["retry_of"] == 9
    assert retry.user_attrs["retry_history"] == [9, trial.number]
    assert retry.user_attrs["resume_from"] == str(inherited)
    assert retry.user_attrs["enqueued"] == {"x": 0.25, "train.seed": 7}  # keys the space lacks
    assert retry.system_attrs["fixed_params"] == {"x": 0.25, "train.seed": 7}

    # the third run of the same parameters is one more than --retries 2 allows
    assert claims.retry(retry, "lost again") is None
    assert said[-1] == (
        f"trial {retry.number} is not retried: its parameters already ran 3 times (--retries 2)"
    )
    assert len(waiting(study)) == 1


def test_a_retry_without_any_state_starts_from_epoch_one(claimer):
    claims, study, _ = claimer
    trial = running(claims)
    study.tell(trial, state=TrialState.FAIL)
    assert claims.retry(study.get_trials(deepcopy=False)[-1], "lost") == " (retry 1 of 2)"
    (retry,) = waiting(study)
    assert "resume_from" not in retry.user_attrs


def test_the_heartbeat_beats_every_interval_on_a_daemon_thread_until_it_stops(claimer, monkeypatch):
    claims, _, _ = claimer
    trial = running(claims)
    tid = claims.trial_id(trial)
    beats: list[int] = []
    monkeypatch.setattr(claims.storage.rdb, "record_heartbeat", beats.append)
    with Heartbeat(claims.storage, tid, 0.05) as beat:
        thread = beat._thread
        assert thread.daemon and thread.name == "hpsearch-heartbeat"  # never holds exit back
        until(lambda: len(beats) >= 3)
    assert len(beats) >= 3 and set(beats) == {tid}
    assert not thread.is_alive()
    stopped = len(beats)
    time.sleep(0.2)
    assert len(beats) == stopped


def test_an_interrupted_trial_records_ctrl_c_or_the_signal_that_ended_it():
    assert interruption_reason(KeyboardInterrupt()) == "interrupted by the user (Ctrl-C)"
    ended = KeyboardInterrupt()
    ended.reason = "terminated by SIGTERM"
    assert interruption_reason(ended) == "terminated by SIGTERM"


def test_a_heartbeat_that_fails_says_so_once_and_once_more_when_it_beats_again(
    claimer, monkeypatch, caplog
):
    claims, _, _ = claimer
    tid = claims.trial_id(running(claims))
    calls = []

    def flaky(trial_id):  # the database away for two beats, then back
        calls.append(trial_id)
        if len(calls) <= 2:
            raise ConnectionError("server closed the connection")

    monkeypatch.setattr(claims.storage.rdb, "record_heartbeat", flaky)
    with caplog.at_level("WARNING"), Heartbeat(claims.storage, tid, 0.05):
        until(lambda: len(calls) >= 4)
    said = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert len(calls) >= 4
    assert said == [
        f"could not record the heartbeat of trial id {tid}: server closed the connection",
        f"heartbeat of trial id {tid} recorded again",
    ]


def test_a_trial_that_finished_meanwhile_is_neither_failed_nor_retried(claimer):
    claims, study, said = claimer
    trial = running(claims)
    study.tell(trial, 0.5)  # its worker told it just before it was judged lost
    tid = claims.trial_id(trial)
    assert claims._lose(tid, trial.number, "no heartbeat") is False
    assert study.get_trials(deepcopy=False)[0].state == TrialState.COMPLETE
    assert waiting(study) == [] and said == []
    mark_interrupted(trial, KeyboardInterrupt())  # too late to mark: no error either
    assert "status" not in study.get_trials(deepcopy=False)[0].user_attrs


def test_a_dead_worker_without_a_recorded_start_time_is_gone():
    me = this_process()
    dead = {**me, "pid": 2**22 + 12345, "start": None}  # above pid_max: no such process
    assert process_gone(dead)
    assert not process_gone({**me, "start": None})  # this very process, start unknown


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(heartbeat=0.0), "--heartbeat must be > 0 seconds, but got 0.0"),
        (dict(heartbeat=-1.0), "--heartbeat must be > 0 seconds, but got -1.0"),
        (
            dict(heartbeat=5.0, grace=5.0),
            "--grace must be longer than the heartbeat (5.0 s), but got 5.0",
        ),
        (
            dict(heartbeat=5.0, grace=4.0),
            "--grace must be longer than the heartbeat (5.0 s), but got 4.0",
        ),
        (dict(max_retries=-1), "--retries must be >= 0, but got -1"),
    ],
)
def test_worker_options_refuse_a_heartbeat_grace_or_retry_count_that_cannot_work(options, message):
    with pytest.raises(ValueError) as info:
        WorkerOptions(**options)
    assert str(info.value) == message


def test_the_grace_is_four_heartbeats_unless_given_and_zero_retries_is_allowed():
    assert WorkerOptions(heartbeat=2.5).grace_period == 10.0
    assert WorkerOptions(heartbeat=2.5, grace=2.6).grace_period == 2.6
    assert WorkerOptions().grace_period == 120.0
    assert WorkerOptions(max_retries=0).max_retries == 0
    assert WorkerOptions(heartbeat=1e-3).heartbeat == 1e-3


class FakeBucket:
    """The three bucket calls a retry makes, on a dict of keys (no S3 server)."""

    def __init__(self, objects: dict[str, bytes], *, broken: bool = False) -> None:
        self.objects, self.broken = objects, broken

    def exists(self, ref: str) -> bool:
        return ref in self.objects

    def copy(self, src: str, dst: str) -> None:
        if self.broken:
            raise ConnectionError("endpoint unreachable")
        self.objects[dst] = self.objects[src]

    def remove(self, ref: str) -> None:
        self.objects.pop(ref, None)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    from search.store import artifacts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = FakeBucket({})
    for name in ("exists", "copy", "remove"):
        monkeypatch.setattr(artifacts, name, getattr(fake, name))
    return fake, artifacts.staging_root() / "lab" / "ckpt"


def test_a_retry_moves_the_lost_trials_state_to_its_kept_key_in_the_bucket(bucket):
    from search.store.workers import _remote_move

    fake, root = bucket
    fake.objects["s3://lab/ckpt/trial-3.last.safetensors"] = b"epoch 4"
    kept = root / "trial-3.lost-1.safetensors"
    moved = _remote_move(root / "trial-3.last.safetensors", kept)
    assert moved == "s3://lab/ckpt/trial-3.lost-1.safetensors"
    assert fake.objects == {moved: b"epoch 4"}  # the worker, if alive, can no longer delete it


def test_a_retry_finds_a_state_moved_before_and_none_where_there_was_none(bucket):
    from search.store.workers import _remote_move

    fake, root = bucket
    assert (
        _remote_move(root / "trial-1.last.safetensors", root / "trial-1.lost.safetensors") is None
    )
    fake.objects["s3://lab/ckpt/trial-2.lost.safetensors"] = b"epoch 2"
    moved = _remote_move(root / "trial-2.last.safetensors", root / "trial-2.lost.safetensors")
    assert moved == "s3://lab/ckpt/trial-2.lost.safetensors"


def test_a_bucket_that_fails_during_a_retry_means_a_fresh_start_not_a_crash(bucket, caplog):
    from search.store.workers import _remote_move

    fake, root = bucket
    fake.broken = True
    fake.objects["s3://lab/ckpt/trial-5.last.safetensors"] = b"epoch 1"
    with caplog.at_level("WARNING", logger="hpsearch"):
        assert _remote_move(root / "trial-5.last.safetensors", root / "t5.kept") is None
    assert "could not keep the resume state of trial-5.last.safetensors in S3" in caplog.text
    assert "endpoint unreachable" in caplog.text
    assert list(fake.objects) == ["s3://lab/ckpt/trial-5.last.safetensors"]


def test_with_checkpoints_in_a_bucket_a_lost_trials_retry_resumes_from_its_moved_state(
    bucket, tmp_path, monkeypatch
):
    fake, root = bucket
    monkeypatch.setenv("SEARCH_ARTIFACTS", "s3://lab/ckpt")
    storage = Storage.open(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage.rdb, direction="maximize")
    claims = SlotClaimer(
        study, storage=storage, n_trials=3, options=WorkerOptions(), checkpoint_dir=root,
        say=lambda line: None,
    )  # fmt: skip
    trial, bare = running(claims), running(claims, placement="node 2")
    fake.objects[f"s3://lab/ckpt/trial-{trial.number}.last.safetensors"] = b"epoch 3"
    bare.set_user_attr("resume_from", "s3://lab/ckpt/trial-0.resume.safetensors")  # inherited
    assert claims.lose_worker(placement=PLACE, pid=os.getpid(), why="gone") == [trial.number]
    assert claims.lose_worker(placement="node 2", pid=os.getpid(), why="gone") == [bare.number]
    first, second = waiting(study)
    kept = f"s3://lab/ckpt/trial-{trial.number}.resume.safetensors"
    assert first.user_attrs["resume_from"] == kept and fake.objects == {kept: b"epoch 3"}
    # nothing of its own in the bucket: the state it had itself resumed from, passed on
    assert second.user_attrs["resume_from"] == "s3://lab/ckpt/trial-0.resume.safetensors"
