"""``search run``'s own decisions, with training faked (faketrain.FakeTrain): which trials
keep their weights, and when ``--timeout`` stops starting trials."""

from __future__ import annotations

import io
import time
import types
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.trial import TrialState

import search.experiments.run as run_mod
from search.cli import main
from search.report.progress import Progress
from search.store import Storage
from search.study.studyfile import load_study

# trial k ends at VALUES[k]: the best three by the end are trials 1, 3 and 5
VALUES = [0.5, 0.9, 0.6, 0.95, 0.4, 0.8]


def _checkpoints(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("trial-*.safetensors")}


def search_run(url: str, *args: str) -> int:
    return main(["run", "--study", "tiny", "-q", "--storage", url, *args])


def run_said(url: str, n_trials: int, **kwargs) -> str:
    """``run_study`` of study "tiny" through the API; the run's own lines."""
    lines = io.StringIO()
    plan = run_mod.plan_run(load_study("tiny"), storage=url)
    run_mod.run_study(plan, n_trials=n_trials, progress=Progress(lines), **kwargs)
    return lines.getvalue()


def test_only_the_best_three_trials_keep_their_checkpoints(write_study, storage_url, fake_train):
    write_study("tiny", TINY_DIGITS)
    on_disk: list[set[str]] = []  # what each trial found when it started

    def curve(cfg):
        on_disk.append(_checkpoints(fake_train.checkpoint_path.parent))
        return [VALUES[len(on_disk) - 1]]

    fake_train.curve = curve
    assert search_run(storage_url, "--trials", "6") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    folder = fake_train.checkpoint_path.parent
    assert folder == Storage(storage_url).artifact_dir("tiny") / "checkpoints"  # as docs/run.md
    assert [t.value for t in study.trials] == VALUES
    # before each trial, the weights on disk are those of the best three so far
    assert on_disk == [
        set(),
        {"trial-0.safetensors"},
        {"trial-0.safetensors", "trial-1.safetensors"},
        {"trial-0.safetensors", "trial-1.safetensors", "trial-2.safetensors"},
        {"trial-1.safetensors", "trial-2.safetensors", "trial-3.safetensors"},
        {"trial-1.safetensors", "trial-2.safetensors", "trial-3.safetensors"},
    ]
    assert _checkpoints(folder) == {
        "trial-1.safetensors", "trial-3.safetensors", "trial-5.safetensors"
    }  # fmt: skip
    for t in study.trials:  # the user attribute still names the file, kept or not
        assert t.user_attrs["checkpoint"] == str(folder / f"trial-{t.number}.safetensors")


def test_each_dropped_checkpoint_is_removed_once_and_a_failed_removal_is_tried_again(
    write_study, storage_url, fake_train, monkeypatch
):
    write_study("tiny", TINY_DIGITS)
    fake_train.curve = lambda cfg: [VALUES[len(fake_train.calls) - 1]]
    monkeypatch.setattr(run_mod, "_REMOVED", set())  # this process's memory of removals
    asked: list[str] = []
    remove = run_mod.artifacts.remove

    def flaky_remove(ref: str) -> None:  # the bucket is away the first time it is asked
        asked.append(ref)
        if asked.count(ref) == 1 and ref.endswith("trial-0.safetensors"):
            raise ConnectionError("endpoint away")
        remove(ref)

    monkeypatch.setattr(run_mod.artifacts, "remove", flaky_remove)
    assert search_run(storage_url, "--trials", "6") == 0
    names = [Path(ref).name for ref in asked]
    # ranked at each trial's end: trial 3's drops 0 (refused); 4's drops 0 again (removed
    # now) and 4; 5's drops 2, and not 0 or 4 again
    assert names == ["trial-0.safetensors", "trial-0.safetensors", "trial-4.safetensors",
                     "trial-2.safetensors"]  # fmt: skip
    assert _checkpoints(fake_train.checkpoint_path.parent) == {
        "trial-1.safetensors", "trial-3.safetensors", "trial-5.safetensors"
    }  # fmt: skip


def test_a_minimizing_study_keeps_the_lowest_three(write_study, storage_url, fake_train):
    write_study("tiny", 'metric = "val_loss"\n' + TINY_DIGITS)  # minimised
    values = iter(VALUES)
    fake_train.curve = lambda cfg: [1.0 - next(values)]  # the fake's val_loss is 1 - val_acc
    assert search_run(storage_url, "--trials", "6") == 0
    assert _checkpoints(fake_train.checkpoint_path.parent) == {
        "trial-0.safetensors", "trial-2.safetensors", "trial-4.safetensors"
    }  # fmt: skip


@pytest.fixture
def clock(monkeypatch, fake_train) -> list[float]:
    """``search run``'s clock, moved 10 s by every trained epoch (one epoch per trial)."""
    now = [0.0]
    fake_train.curve = lambda cfg: [0.5]
    fake_train.tick = lambda: now.__setitem__(0, now[0] + 10.0)
    monkeypatch.setattr(
        run_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep)
    )
    return now


def test_timeout_stops_starting_new_trials(write_study, storage_url, clock, capsys):
    # trials start at 0, 10 and 20 s; none at 30 s, long before the 10 trials
    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "10", "--timeout", "25") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert len(study.trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "timeout reached with 3 of 10 trials finished" in capsys.readouterr().err


def test_a_study_full_before_the_timeout_does_not_report_one(
    write_study, storage_url, clock, capsys
):
    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1", "--timeout", "5") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # started at 0 s
    assert "timeout" not in capsys.readouterr().err


# Trial 0 (enqueued lr 0.01) learns; trial 1 (lr 1e-4) stays low from the first epoch.
STRONG, WEAK = [0.8, 0.9, 0.95], [0.1, 0.15, 0.2]
ENQUEUE = '\n[[enqueue]]\n"optim.lr" = 0.01\n\n[[enqueue]]\n"optim.lr" = 0.0001\n'


@pytest.mark.parametrize(
    "pruner",
    [
        'name = "median"\nn_startup_trials = 1\nn_warmup_steps = 0',
        'name = "percentile"\npercentile = 25.0\nn_startup_trials = 1\nn_warmup_steps = 0',
        'name = "successive_halving"\nmin_resource = 1\nreduction_factor = 2',
        # max_resource defaults to the study's epochs; one bracket (log_4 of 3 epochs < 1)
        'name = "hyperband"\nmin_resource = 1\nreduction_factor = 4',
    ],
    ids=["median", "percentile", "successive_halving", "hyperband"],
)
def test_each_pruner_stops_a_weak_trial_after_its_first_epoch(
    write_study, storage_url, fake_train, pruner
):
    write_study("tiny", TINY_DIGITS.replace('name = "none"', pruner) + ENQUEUE)
    fake_train.curve = lambda cfg: STRONG if cfg.optim.lr >= 0.01 else WEAK
    assert search_run(storage_url, "--trials", "2") == 0
    strong, weak = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert strong.state == TrialState.COMPLETE and strong.value == 0.95
    assert weak.params["optim.lr"] == 0.0001
    assert weak.state == TrialState.PRUNED
    assert weak.user_attrs["reason"] == "pruned after epoch 1"
    assert weak.intermediate_values == {1: 0.1}


def test_the_stop_lines_count_finished_trials_of_the_wanted_or_alone_without_a_count():
    assert run_mod._of(3, 10) == "3 of 10"  # --trials 10
    assert run_mod._of(3, None) == "3"  # a budget alone: no "of None"
    assert run_mod._of(0, 0) == "0 of 0"


# ------------------------------------------------------- telling a trial's outcome (_tell)


def _trial_id(rdb: optuna.storages.RDBStorage, study: str, number: int) -> int:
    """A trial's storage id through the storage's public lookup (``Trial`` keeps it private)."""
    return rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study), number)


def _asked(storage_url: str):
    storage = Storage(storage_url)
    study = optuna.create_study(study_name="tell", storage=storage.rdb, direction="maximize")
    trial = study.ask()
    return study, trial, storage, _trial_id(storage.rdb, "tell", trial.number)


def test_a_result_for_a_trial_a_sweep_already_failed_is_not_stored(storage_url):
    study, trial, storage, tid = _asked(storage_url)
    storage.rdb.set_trial_state_values(tid, TrialState.FAIL)  # another worker's sweep
    assert run_mod._tell(study, trial, TrialState.COMPLETE, 0.9, storage, tid) is False
    assert storage.rdb.get_trial(tid).state == TrialState.FAIL


def test_a_result_whose_write_landed_before_the_error_counts_as_told(storage_url):
    study, trial, storage, tid = _asked(storage_url)
    study.tell(trial, 0.9)  # landed; the connection dropped before the answer came back
    assert run_mod._tell(study, trial, TrialState.COMPLETE, 0.9, storage, tid) is True
    assert storage.rdb.get_trial(tid).value == 0.9


def test_a_pruned_or_complete_outcome_is_stored_with_its_state(storage_url):
    study, trial, storage, tid = _asked(storage_url)
    assert run_mod._tell(study, trial, TrialState.PRUNED, None, storage, tid) is True
    assert storage.rdb.get_trial(tid).state == TrialState.PRUNED
    second = study.ask()
    second_id = _trial_id(storage.rdb, "tell", second.number)
    assert run_mod._tell(study, second, TrialState.COMPLETE, 0.7, storage, second_id)
    assert storage.rdb.get_trial(second_id).value == 0.7


def test_an_error_telling_a_trial_still_running_is_raised(storage_url):
    study, trial, storage, tid = _asked(storage_url)
    with pytest.raises(ValueError):  # Optuna refuses the state: a bug, not a race to hide
        run_mod._tell(study, trial, TrialState.WAITING, None, storage, tid)
    assert storage.rdb.get_trial(tid).state == TrialState.RUNNING


# ------------------------------------------- a claimed trial: worker, heartbeat, a retry's state


def test_a_retry_runs_with_its_worker_placement_and_heartbeat_then_drops_the_state_it_resumed(
    write_study, storage_url, fake_train, monkeypatch, capsys
):
    from search.store.workers import PLACEMENT_ENV, worker_name

    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1") == 0
    folder = fake_train.checkpoint_path.parent
    kept = folder / "trial-0.kept.safetensors"  # a lost trial's state, moved aside for its retry
    kept.write_bytes(b"state")
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    study.enqueue_trial(
        study.trials[0].params, user_attrs={"retry_of": 0, "resume_from": str(kept)}
    )
    beats: list[int] = []  # the trial ids of every heartbeat recorded
    record = optuna.storages.RDBStorage.record_heartbeat

    def counted(self, trial_id: int) -> None:
        beats.append(trial_id)
        record(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", counted)
    fake_train.tick = lambda: time.sleep(0.1)  # 3 epochs of 0.1 s: beats every 0.05 s
    monkeypatch.setenv(PLACEMENT_ENV, "node 10.0.0.7 GPU 1")  # as a Ray worker has it
    capsys.readouterr()
    code = main(["run", "--study", "tiny", "--storage", storage_url, "--trials", "2",
                 "--heartbeat", "0.05", "--grace", "5"])  # fmt: skip
    assert code == 0
    retry = optuna.load_study(study_name="tiny", storage=storage_url).trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    err = capsys.readouterr().err
    assert "trial 1 retries trial 0 from its last finished epoch" in err
    assert "trial 1 runs on node 10.0.0.7 GPU 1" in err
    assert retry.user_attrs["placement"] == "node 10.0.0.7 GPU 1"
    assert retry.user_attrs["worker"] == worker_name()
    retry_id = _trial_id(optuna.storages.RDBStorage(storage_url), "tiny", 1)
    assert beats.count(retry_id) >= 2  # the claim's, and the thread's while it trained
    assert not kept.exists()  # the retry is done with it


# ------------------------------------- a claimed trial's other endings: late, refused, Ctrl-C


class _Ends:
    """Stands in for the Objective: after ``meanwhile``, the trial's run raises ``outcome``
    or returns it as the trial's value."""

    def __init__(self, outcome, checkpoint_dir: Path, meanwhile=None) -> None:
        self.outcome, self.checkpoint_dir, self.meanwhile = outcome, checkpoint_dir, meanwhile

    def __call__(self, trial: optuna.Trial) -> float:
        if self.meanwhile is not None:
            self.meanwhile()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _run_one(
    storage_url: str, tmp_path: Path, outcome, *, failed_meanwhile=False, resume_from=None
):
    """``_run_claimed`` on one asked trial whose run ends with ``outcome``; the trial's
    last state is on disk. Returns what it returned ("raised" for Ctrl-C), the stored
    trial, its last state's path and the progress lines."""
    from search.store.workers import WorkerOptions

    study, trial, storage, tid = _asked(storage_url)
    last = tmp_path / f"trial-{trial.number}.last.safetensors"
    last.write_bytes(b"state")
    if resume_from is not None:  # a retry
        trial.set_user_attr("resume_from", str(resume_from))

    def sweep() -> None:  # another worker's, while this one was paused in training
        storage.rdb.set_trial_state_values(tid, TrialState.FAIL)

    objective = _Ends(outcome, tmp_path, sweep if failed_meanwhile else None)
    lines = io.StringIO()
    claimer = types.SimpleNamespace(trial_id=lambda t: tid)
    options = WorkerOptions(heartbeat=30.0, grace=90.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tell Optuna has to guess at warns the user
        try:
            out = run_mod._run_claimed(
                study, trial, objective, storage, claimer, options, Progress(lines)
            )
        except KeyboardInterrupt:
            out = "raised"
    return out, storage.rdb.get_trial(tid), last, lines.getvalue()


@pytest.mark.parametrize(
    "outcome",
    [optuna.exceptions.UpdateFinishedTrialError("finished"), 0.9, float("nan")],
    ids=["error-on-its-next-write", "a-value", "a-non-finite-value"],
)
def test_a_late_result_of_a_trial_failed_meanwhile_is_dropped_with_its_last_state(
    storage_url, tmp_path, outcome
):
    out, stored, last, lines = _run_one(storage_url, tmp_path, outcome, failed_meanwhile=True)
    assert out is None and stored.state == TrialState.FAIL and stored.value is None
    assert not last.exists()  # not moved aside for a retry: nobody needs it
    assert "trial 0: this worker sent no heartbeat for over 90 s" in lines
    assert "the late result is discarded" in lines


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None])
def test_a_non_finite_or_missing_value_is_stored_as_pruned_with_the_reason(
    storage_url, tmp_path, value
):
    out, stored, _, _ = _run_one(storage_url, tmp_path, value)
    assert stored.state == TrialState.PRUNED and out.state == TrialState.PRUNED
    assert stored.value is None
    assert stored.user_attrs["reason"] == f"non-finite objective value {value}"


def test_a_retry_whose_resumed_state_cannot_be_removed_still_counts(
    storage_url, tmp_path, monkeypatch
):
    kept = tmp_path / "trial-0.kept.safetensors"

    def unreachable(url: str) -> None:
        raise ConnectionError("the bucket is away")

    monkeypatch.setattr(run_mod.artifacts, "remove", unreachable)
    out, stored, _, _ = _run_one(storage_url, tmp_path, 0.9, resume_from=kept)
    assert stored.state == TrialState.COMPLETE and out.value == 0.9


def test_a_trial_whose_run_raised_is_told_failed_without_a_warning(storage_url, tmp_path):
    out, stored, last, _ = _run_one(storage_url, tmp_path, RuntimeError("a bug in a model"))
    assert stored.state == TrialState.FAIL and out.state == TrialState.FAIL
    assert last.exists()  # a retry or a rerun decides


def test_a_configuration_refused_for_the_budget_is_told_failed_without_a_warning(
    storage_url, tmp_path
):
    out, stored, last, _ = _run_one(storage_url, tmp_path, run_mod.NoTimeLeft())
    assert stored.state == TrialState.FAIL and out.state == TrialState.FAIL
    assert last.exists()  # only a rerun's new trials make it stale


def test_ctrl_c_in_a_trial_tells_it_failed_as_interrupted_drops_its_last_state_and_goes_on_up(
    storage_url, tmp_path
):
    out, stored, last, _ = _run_one(storage_url, tmp_path, KeyboardInterrupt())
    assert out == "raised"
    assert stored.state == TrialState.FAIL and stored.user_attrs["status"] == "interrupted"
    assert not last.exists()  # a rerun starts new trials


def test_ctrl_c_in_a_trial_another_worker_failed_meanwhile_still_ends_as_an_interrupt(
    storage_url, tmp_path
):
    out, stored, _, _ = _run_one(storage_url, tmp_path, KeyboardInterrupt(), failed_meanwhile=True)
    assert out == "raised"  # not the tell's error about a finished trial
    assert stored.state == TrialState.FAIL and "status" not in stored.user_attrs


# ------------------------------------------------------ what a run does before its first claim


@pytest.mark.parametrize(
    ("sampler", "worker", "reseeded"),
    [
        ('name = "random"', "2/2", True),  # unseeded, in one of --workers 2: own stream
        ('name = "random"', None, False),  # unseeded, alone on SQLite: nothing to part
        ('name = "random"\nseed = 0', "2/2", False),  # seeded: by seed and trial number
    ],
)
def test_an_unseeded_sampler_is_reseeded_in_a_worker_started_with_others_not_alone_on_sqlite(
    write_study, storage_url, fake_train, monkeypatch, sampler, worker, reseeded
):
    from search.store.workers import CHILD_ENV

    write_study("tiny", TINY_DIGITS.replace('name = "random"\nseed = 0', sampler))
    calls: list[str] = []
    monkeypatch.setattr(optuna.samplers.RandomSampler, "reseed_rng", lambda self: calls.append(1))
    if worker is not None:
        monkeypatch.setenv(CHILD_ENV, worker)
    else:
        monkeypatch.delenv(CHILD_ENV, raising=False)
    assert search_run(storage_url, "--trials", "1") == 0
    assert bool(calls) is reseeded, calls


def test_a_trial_whose_worker_died_is_retried_from_the_state_it_left_in_the_studys_folder(
    write_study, storage_url, fake_train
):
    from search.store.workers import WORKER_ATTR, this_process

    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1") == 0
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.load_study(study_name="tiny", storage=rdb)
    lost = study.ask()  # trial 1: RUNNING, its worker this pid in an earlier process
    lost_id = _trial_id(rdb, "tiny", lost.number)
    rdb.record_heartbeat(lost_id)
    me = this_process()
    rdb.set_trial_system_attr(lost_id, WORKER_ATTR, {**me, "start": me["start"] - 1})
    folder = Storage(storage_url).checkpoint_dir("tiny")
    (folder / "trial-1.last.safetensors").write_bytes(b"state after epoch 2")
    said = run_said(storage_url, 2)
    assert f"trial 1 worker lost: worker {me['host']}:{me['pid']} is gone" in said
    trials = optuna.load_study(study_name="tiny", storage=rdb).trials
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["status"] == "lost"
    retry = trials[2]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 1
    assert retry.user_attrs["resume_from"] == str(folder / "trial-1.resume.safetensors")


def test_a_worker_waits_while_the_rest_of_the_trials_runs_elsewhere_and_says_so_once_a_wait(
    write_study, storage_url, fake_train, monkeypatch
):
    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1") == 0
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.load_study(study_name="tiny", storage=rdb)
    elsewhere = []  # trials 1 and 2, running on another machine
    for _ in range(2):
        elsewhere.append(_trial_id(rdb, "tiny", study.ask().number))
        rdb.record_heartbeat(elsewhere[-1])
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the run's own waits; the other worker goes on
        slept.append(seconds)
        if len(slept) == 2:  # its trial 1 fails: room for one trial here
            rdb.set_trial_state_values(elsewhere[0], TrialState.FAIL)
        if len(slept) == 3:  # its trial 2 completes: the study is full
            rdb.set_trial_state_values(elsewhere[1], TrialState.COMPLETE, [0.5])

    clock = types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
    monkeypatch.setattr(run_mod, "time", clock)
    said = run_said(storage_url, 3, options=run_mod.WorkerOptions(heartbeat=2.0, grace=60.0))
    assert slept == [2.0] * 3  # a heartbeat's length each time (not less than 0.2 s)
    assert len(fake_train.calls) == 2  # the first run's trial, and the one in the room made
    assert said.count("waiting: the rest of the budget is running in other workers") == 2
    assert "(a trial without heartbeat for 60 s is retried here)" in said


def test_after_a_late_result_is_dropped_the_run_goes_on_to_its_trials(
    write_study, storage_url, fake_train, monkeypatch
):
    write_study("tiny", TINY_DIGITS)
    real = run_mod._run_claimed
    dropped: list[int] = []

    def first_dropped(study, trial, objective, storage, claimer, *rest):
        if dropped:
            return real(study, trial, objective, storage, claimer, *rest)
        dropped.append(trial.number)  # failed by another worker's sweep; its result dropped
        storage.rdb.set_trial_state_values(claimer.trial_id(trial), TrialState.FAIL)
        return None

    monkeypatch.setattr(run_mod, "_run_claimed", first_dropped)
    assert search_run(storage_url, "--trials", "2") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2


def test_a_setting_changed_with_force_is_recorded_from_its_trial_and_noted_for_the_dashboard(
    write_study, storage_url, fake_train, capsys
):
    from optuna_dashboard import get_note

    write_study("tiny", TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1") == 0
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 2"))
    capsys.readouterr()
    assert search_run(storage_url, "--trials", "2") == 2  # refused without --force
    assert "train.epochs: 3 -> 2" in capsys.readouterr().err
    assert search_run(storage_url, "--trials", "2", "--force") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.user_attrs["problem_changes"] == [
        {"from_trial": 1, "changes": ["train.epochs: 3 -> 2"]}
    ]
    assert "- before trial 1: train.epochs: 3 -> 2" in get_note(study)
    assert len(study.trials) == 2


def test_a_rerun_does_not_enqueue_the_study_files_queue_again(write_study, storage_url, fake_train):
    write_study("tiny", TINY_DIGITS + '\n[[enqueue]]\n"optim.lr" = 0.005\n')
    assert search_run(storage_url, "--trials", "1") == 0
    assert search_run(storage_url, "--trials", "2") == 0
    first, second = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert first.user_attrs["enqueued"] == {"optim.lr": 0.005}
    assert "enqueued" not in second.user_attrs  # drawn, not the queue's baseline again
