"""Faults a study must survive, each a test, on SQLite and on a real PostgreSQL (started by
``tests/pgserver.py``): a killed or interrupted worker, out of memory, non-finite values,
malicious pickles, a deleted source checkpoint, a corrupt image, odd study names, and the
trial budget under contention. Fault hooks: ``faultkit.injected`` in this process, and
``HPSEARCH_FAULTS`` for the ``search`` processes the tests start."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import socket
import subprocess
import threading
import time
import warnings
from datetime import datetime, timedelta

import numpy as np
import optuna
import pytest
import sqlalchemy
from conftest import TINY_DIGITS
from faultkit import (
    FAST,
    FAST_OPTIONS,
    FINISHED,
    STORAGES,
    ZONES,
    Watch,
    finish,
    injected,
    load,
    quiet,
    spawn,
    states,
    storage_param,
    time_zone,
    wait_for,
)
from optuna.trial import TrialState
from pgserver import pg_fixture, pg_url_fixture  # noqa: F401  (fixtures pg, pg_url)
from PIL import Image

import trainer
from search.cli import main
from search.experiments.run import plan_run, prepare_study, run_study
from search.store import Storage
from search.store import storage as storage_mod
from search.store.workers import (
    WORKER_ATTR,
    SlotClaimer,
    WorkerOptions,
    _process_state,
    process_gone,
    this_process,
)
from search.study.studyfile import load_study


@pytest.fixture(params=STORAGES)
def url(request, tmp_path):
    return storage_param(request, tmp_path)


def run(name: str, url: str, n: int, **plan_kwargs) -> optuna.Study:
    plan = plan_run(load_study(name), storage=url, **plan_kwargs)
    return run_study(plan, n_trials=n, progress=quiet(), options=FAST_OPTIONS)


def checkpoint_dir(url: str, name: str):
    return Storage.open(url).artifact_dir(name) / "checkpoints"


def kill_once_epoch_1_is_saved(proc, watch: Watch, url: str, name: str):
    """SIGKILL the run ``proc`` once a trial has reported epoch 1 and saved its epoch state;
    returns that trial (as ``watch`` saw it). ``watch`` is closed either way."""
    try:
        victim = wait_for(
            lambda: watch.running_with_epochs(1), timeout=60, what="epoch 1", proc=proc
        )
        state = checkpoint_dir(url, name) / f"trial-{victim.number}.last.safetensors"
        wait_for(state.exists, timeout=30, what="the epoch-1 state file", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
    return victim


# --------------------------------------------------------------------- killed workers


def test_sigkill_mid_epoch_is_retried_from_its_last_epoch(write_study, url):
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 2"))
    watch = Watch(url, "tiny")
    proc = spawn(
        ["run", "--study", "tiny", "--trials", "2", "-q", *FAST],
        storage=url,
        faults="epoch_sleep=1.0",  # every epoch takes >= 1 s: we kill in the middle
    )
    victim = kill_once_epoch_1_is_saved(proc, watch, url, "tiny")
    assert (checkpoint_dir(url, "tiny") / f"trial-{victim.number}.last.safetensors").exists()
    # as if it had run on another machine: only its silence (the heartbeat) can tell
    storage = storage_mod.open_storage(url)
    tid = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("tiny"), victim.number
    )
    info = storage.get_trial_system_attrs(tid)[WORKER_ATTR]
    storage.set_trial_system_attr(tid, WORKER_ATTR, {**info, "host": "elsewhere"})
    storage.engine.dispose()

    study = run("tiny", url, 2)  # another worker: fails the silent trial and retries it

    trials = study.trials
    lost = trials[victim.number]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["status"] == "lost"
    assert "no heartbeat" in lost.user_attrs["reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state in FINISHED and retry.params == lost.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.intermediate_values[1] == lost.intermediate_values[1]  # inherited, not rerun
    assert sum(s in FINISHED for s in states(study)) == 2
    assert TrialState.RUNNING not in states(study)
    leftovers = [p.name for p in checkpoint_dir(url, "tiny").glob("*.safetensors")]
    assert not [n for n in leftovers if ".last." in n or ".resume." in n], leftovers


def test_a_rerun_after_sigkill_on_this_machine_retries_the_lost_trial_at_once(
    write_study, storage_url
):
    """A single worker killed mid-trial (the OOM killer, a laptop closing), default heartbeat
    and grace (30 s / 120 s): the rerun on the same machine sees that the worker's process is
    gone and retries its trial at once. It is given 10 s (``--timeout``) to start the retry, far
    less than the grace period."""
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 2"))
    watch = Watch(storage_url, "tiny")
    args = ["run", "--study", "tiny", "--trials", "1", "-q", "--threads", "1"]
    proc = spawn(args, storage=storage_url, faults="epoch_sleep=1.0")
    victim = kill_once_epoch_1_is_saved(proc, watch, storage_url, "tiny")

    code, out = finish(spawn([*args, "--timeout", "10"], storage=storage_url), 120)

    assert code == 0, out
    assert "waiting" not in out, out  # never waited for the grace period
    study = load(storage_url, "tiny")
    lost = study.trials[victim.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "lost"
    gone = f"worker {socket.gethostname()}:{proc.pid} is gone (process no longer exists)"
    assert lost.user_attrs["reason"] == f"worker lost: {gone}"
    assert f"trial {victim.number} worker lost: {gone}; retrying its parameters" in out
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state in FINISHED and retry.params == lost.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    # the retry could only start within the rerun's 10 s
    assert [s in FINISHED for s in states(study)] == [False, True]


def _claimed_by(storage, study, info: dict | None) -> int:
    """A RUNNING trial with a fresh heartbeat, claimed by the process ``info`` describes
    (None: claimed a moment ago, its worker not yet recorded)."""
    sid = storage.get_study_id_from_name(study.study_name)
    tid = storage.get_trial_id_from_study_id_trial_number(sid, study.ask().number)
    storage.record_heartbeat(tid)
    if info is not None:
        storage.set_trial_system_attr(tid, WORKER_ATTR, info)
    return tid


def test_only_a_trial_whose_local_worker_process_is_gone_is_failed_before_the_grace(
    write_study, url
):
    write_study("tiny", TINY_DIGITS)
    store, study = prepare_study(plan_run(load_study("tiny"), storage=url))
    storage = store.rdb
    said: list[str] = []
    slow = WorkerOptions(heartbeat=30, grace=120)
    claimer = SlotClaimer(study, storage=store, n_trials=9, options=slow, say=said.append)
    me = this_process()
    dead = subprocess.Popen(["sleep", "60"])
    dead_info = {**me, "pid": dead.pid, "start": _process_state(dead.pid)[1]}
    dead.kill()
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        alive_info = {**me, "pid": alive.pid, "start": _process_state(alive.pid)[1]}
        unrecorded = _claimed_by(storage, study, None)
        live = _claimed_by(storage, study, alive_info)
        elsewhere = _claimed_by(storage, study, {**dead_info, "host": "another-machine"})
        container = _claimed_by(storage, study, {**dead_info, "pidns": "pid:[1]"})
        victim = _claimed_by(storage, study, dead_info)
        assert claimer.sweep() == [storage.get_trial(victim).number]
    finally:
        alive.kill()
        alive.wait()
    assert storage.get_trial(victim).state == TrialState.FAIL
    for tid in (unrecorded, live, elsewhere, container):  # their heartbeats decide
        assert storage.get_trial(tid).state == TrialState.RUNNING
    reason = storage.get_trial(victim).user_attrs["reason"]
    assert (
        reason == f"worker lost: worker {me['host']}:{dead.pid} is gone (process no longer exists)"
    )
    assert any(reason in s and "retrying its parameters" in s for s in said), said


def test_a_dead_worker_is_told_from_a_live_one_by_pid_start_time_and_state():
    me = this_process()
    assert not process_gone(me)  # this very process
    assert process_gone({**me, "start": me["start"] - 1})  # our pid, an earlier process
    child = subprocess.Popen(["sleep", "60"])
    try:
        info = {**me, "pid": child.pid, "start": _process_state(child.pid)[1]}
        assert not process_gone(info)
        assert process_gone({**info, "start": info["start"] + 1})  # the pid was reused
        child.kill()  # killed, not yet reaped by us (its parent): a zombie
        deadline = time.monotonic() + 10
        while _process_state(child.pid)[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_gone(info)
    finally:
        child.kill()
        child.wait()
    assert process_gone(info)
    assert not process_gone({**info, "host": "elsewhere"})
    assert not process_gone({**info, "boot": "another-boot"})
    assert not process_gone({k: v for k, v in info.items() if k != "pid"})


@pytest.mark.parametrize(
    "url, sig, code",
    [
        pytest.param("sqlite", signal.SIGINT, 130, id="sqlite-SIGINT"),
        # SIGTERM on PostgreSQL: test_postgres.py sends it to a --workers launcher
    ],
    indirect=["url"],
)  # fmt: skip
def test_signal_fails_the_trial_with_a_reason_and_a_rerun_completes(write_study, url, sig, code):
    write_study("tiny", TINY_DIGITS)
    watch = Watch(url, "tiny")
    proc = spawn(
        ["run", "--study", "tiny", "--trials", "2", "-q", *FAST],
        storage=url,
        faults="epoch_sleep=1.0",
    )
    try:
        victim = wait_for(
            lambda: watch.running_with_epochs(1), timeout=60, what="epoch 1", proc=proc
        )
        proc.send_signal(sig)
        rc, out = finish(proc, 60)
    finally:
        watch.close()
    assert rc == code, out
    assert "Traceback" not in out and "rerun to go on" in out
    study = load(url, "tiny")
    trial = study.trials[victim.number]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "interrupted"
    assert ("SIGTERM" if sig == signal.SIGTERM else "Ctrl-C") in trial.user_attrs["reason"]
    assert TrialState.RUNNING not in states(study)

    study = run("tiny", url, 2)
    assert sum(s in FINISHED for s in states(study)) == 2
    assert TrialState.RUNNING not in states(study)


def test_a_signal_after_training_but_before_the_tell_still_records_it_as_the_reason(
    write_study, url, monkeypatch
):
    """SIGTERM landing while a trained trial is being annotated (its status and reason from
    training already stored): the trial is failed with the signal as its reason."""
    from search.cli import Terminated

    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 1"))

    def signal_lands(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr("search.experiments.objective.annotate_trial", signal_lands)
    with pytest.raises(Terminated):
        run("tiny", url, 1)
    (trial,) = load(url, "tiny").trials
    assert trial.state == TrialState.FAIL
    assert (trial.user_attrs["status"], trial.user_attrs["reason"]) == (
        "interrupted",
        "terminated by SIGTERM",
    )
    assert trial.user_attrs["epochs_run"] == 1  # it had trained


@pytest.mark.parametrize("tz", ZONES)
def test_a_trial_left_without_a_heartbeat_is_judged_in_utc_in_any_time_zone(write_study, url, tz):
    """Trials left RUNNING without a heartbeat row (an older version, a crash before the first
    beat) are failed by their start time: one started now stays, one started 10 min ago goes,
    whatever the worker's time zone (Optuna hands the start out as local time)."""
    write_study("tiny", TINY_DIGITS)
    with time_zone(tz):
        store, study = prepare_study(plan_run(load_study("tiny"), storage=url))
        storage = store.rdb
        sid = storage.get_study_id_from_name("tiny")

        def running_since(start: datetime) -> int:
            template = optuna.trial.create_trial(state=TrialState.RUNNING)
            template.datetime_start = start
            return storage.create_new_trial(sid, template_trial=template)

        running_since(datetime.now())
        old = running_since(datetime.now() - timedelta(minutes=10))
        claimer = SlotClaimer(study, storage=store, n_trials=5, options=FAST_OPTIONS)
        assert claimer.stale() == [(old, 1, "left running without a heartbeat")]


def test_lost_trials_are_retried_a_bounded_number_of_times(write_study, url):
    write_study("tiny", TINY_DIGITS)
    store, study = prepare_study(plan_run(load_study("tiny"), storage=url))
    said: list[str] = []
    options = WorkerOptions(heartbeat=0.5, grace=2.0, max_retries=2)
    claimer = SlotClaimer(study, storage=store, n_trials=5, options=options, say=said.append)
    beats = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("heartbeat"))
    for _ in range(3):  # the original and two retries all die
        trial = claimer.claim()
        assert isinstance(trial, optuna.Trial)
        trial.suggest_float("x", 0.0, 1.0)
        with store.engine.begin() as conn:  # its worker went silent long ago
            conn.execute(beats.update().values(heartbeat=sqlalchemy.literal(
                __import__("datetime").datetime(2000, 1, 1))))  # fmt: skip
        assert claimer.sweep() == [trial.number]
    trials = load(url, "tiny").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert len({t.params["x"] for t in trials}) == 1  # the same parameters each time
    assert [t.user_attrs.get("retry_history") for t in trials] == [None, [0], [0, 1]]
    assert all(t.user_attrs["status"] == "lost" for t in trials)
    assert any("not retried" in s and "--retries 2" in s for s in said), said


def test_budget_is_exact_when_workers_race(write_study, url):
    """Four threads claim slots of one study at once, each trial pruned at once: exactly N
    trials exist afterwards (claims are serialised in the database, not counted after)."""
    write_study("tiny", TINY_DIGITS)
    store, study = prepare_study(plan_run(load_study("tiny"), storage=url))
    n, errors = 7, []

    def worker():
        claimer = SlotClaimer(study, storage=store, n_trials=n, options=FAST_OPTIONS)
        try:
            while True:
                got = claimer.claim()
                if got == "done":
                    return
                if got == "wait":
                    time.sleep(0.05)
                    continue
                time.sleep(0.02)
                study.tell(got, state=TrialState.PRUNED)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert states(load(url, "tiny")) == [TrialState.PRUNED] * n


# --------------------------------------------------------------------- trainer faults


def test_out_of_memory_halves_the_micro_batch_then_prunes_with_reason_oom(write_study, url):
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 1"))  # batch size 128
    with injected("oom_above=32"):
        (trial,) = run("tiny", url, 1).trials
    assert trial.state == TrialState.COMPLETE
    attrs = trial.user_attrs
    assert (attrs["oom_retries"], attrs["micro_batch"], attrs["accum_steps"]) == (2, 32, 4)
    assert attrs["effective_batch"] == 128 == attrs["config"]["data.batch_size"]

    with injected("oom_above=0"):  # nothing fits
        trial = run("tiny", url, 2).trials[1]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["status"] == "oom"
    assert trial.user_attrs["reason"].startswith("oom: out of memory at micro-batch 2")


def test_non_finite_values_are_never_a_complete_trial(write_study, url, monkeypatch):
    write_study("tiny", TINY_DIGITS)
    bad = iter([math.nan, math.inf, -math.inf])

    def fake_train(cfg, **kwargs):
        v = next(bad)
        h = {"epoch": 1, "train_loss": v, "train_acc": 0.5, "val_loss": v, "val_acc": v,
             "lr": 1e-3, "seconds": 0.1}  # fmt: skip
        return trainer.TrainResult(status="complete", reason="ran", history=[h], best_epoch=1)

    with monkeypatch.context() as m:
        m.setattr("search.experiments.objective.trainer.train", fake_train)
        study = run("tiny", url, 3)
    assert states(study) == [TrialState.PRUNED] * 3
    assert all(t.value is None or math.isfinite(t.value) for t in study.trials)

    write_study("tiny2", TINY_DIGITS)
    study = run("tiny2", url, 1, fixed={"optim.lr": 1e30})  # a real diverging loss
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["status"] == "nonfinite_loss"


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_malicious_pickle_never_executes(write_study, url, tmp_path, capsys):
    write_study("tiny", TINY_DIGITS)
    marker = tmp_path / "pwned"
    for name in ("evil.pt", "evil.safetensors"):
        (tmp_path / name).write_bytes(pickle.dumps(_Evil(marker)))

    # as pretrained weights: refused before any trial, one line, exit code 2
    args = ["run", "--study", "tiny", "--trials", "1", "--storage", url, "-q"]
    assert main([*args, "--set", f"model.pretrained={tmp_path / 'evil.pt'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not be loaded safely" in err and len(err.splitlines()) == 1

    # as the epoch state a retried trial resumes from: ignored, the trial starts at epoch 1
    _, study = prepare_study(plan_run(load_study("tiny"), storage=url))
    study.enqueue_trial({}, user_attrs={"resume_from": str(tmp_path / "evil.safetensors")})
    (trial,) = run("tiny", url, 1).trials
    assert trial.state == TrialState.COMPLETE
    assert "not a readable resume state" in trial.user_attrs["resume_skipped"]
    assert "resumed_from_epoch" not in trial.user_attrs
    assert not marker.exists()


SOURCE = TINY_DIGITS.replace("image_size = 8\n", "image_size = 8\nclasses = [0, 1, 2, 3, 4]\n")
TARGET = (
    TINY_DIGITS.replace('space = "digits"', 'space = "transfer"')
    .replace('image_size = 8\n', 'image_size = 8\nclasses = [5, 6, 7, 8, 9]\n')
    .replace('"model.backbone" = "small_cnn"\n"model.width" = 8\n', '"model.pretrained" = "study:src"\n')
    .replace("epochs = 3", "epochs = 1")
)  # fmt: skip


def test_deleted_source_checkpoint_is_a_clear_error(write_study, url, capsys):
    write_study("src", SOURCE)
    write_study("dst", TARGET)
    source = run("src", url, 1).best_trial
    ckpt = source.user_attrs["checkpoint"]
    plan = plan_run(load_study("dst"), storage=url)  # resolves study:src to that file
    assert run_study(plan, n_trials=1, progress=quiet()).trials[0].state in FINISHED

    os.unlink(ckpt)  # gone while the target study runs
    with pytest.raises(RuntimeError, match="trials in a row failed; last: ValueError: checkpoint"):
        run_study(plan, n_trials=3, progress=quiet())
    failed = load(url, "dst").trials[-1]
    assert failed.state == TrialState.FAIL and "does not exist" in failed.user_attrs["reason"]

    # a new run names the source trial and the missing file, before any trial
    n_before = len(load(url, "dst").trials)
    assert main(["run", "--study", "dst", "--trials", "3", "--storage", url, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"trial {source.number} of 'src' is gone" in err and ckpt in err
    assert len(load(url, "dst").trials) == n_before


def _image_tree(root, per_class=12):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(250, 20, 20), (20, 20, 250)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.tile(np.array(colour, dtype=np.int16), (12, 12, 1))
            img += rng.integers(-30, 31, size=img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")


FOLDER = (
    TINY_DIGITS.replace('name = "digits"\nimage_size = 8', 'name = "folder"\nimage_size = 8')
    .replace("epochs = 3", "epochs = 1")
    .replace('"data.batch_size" = 128', '"data.batch_size" = 8')
)


def test_a_corrupt_image_found_mid_study_is_skipped_with_a_warning(
    write_study, url, tmp_path, capsys
):
    images = tmp_path / "images"
    _image_tree(images)
    write_study("imgs", FOLDER)
    assert len(run("imgs", url, 1, data_root=str(images)).trials) == 1

    bad = images / "class1" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")  # damaged while the study runs
    trainer.data._load_cached.cache_clear()  # as a new worker process would
    # one image fewer is other data: the study refuses to mix it in unless told to
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image file.*3\.png"):
        with pytest.raises(ValueError, match="the images changed"):
            run("imgs", url, 2, data_root=str(images))
    trainer.data._load_cached.cache_clear()
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image file.*3\.png"):
        study = run("imgs", url, 2, data_root=str(images), force=True)
    assert sum(s in FINISHED for s in states(study)) == 2

    trainer.data._load_cached.cache_clear()
    args = ["run", "--study", "imgs", "--trials", "3", "--storage", url, "--data", str(images)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--set", "data.strict=true", "-q"]) == 2
    err = capsys.readouterr().err
    assert "3.png" in err and "Traceback" not in err


# --------------------------------------------------------------------- names and paths


NAMES = [
    'it\'s "quoted" / slash\\back: 研究 ✓ données',
    "../../escape",
    "x" * storage_mod.MAX_NAME_LENGTH,
]


def test_study_names_are_stored_verbatim_and_write_only_under_the_artifact_dir(
    write_study, url, tmp_path, monkeypatch, capsys
):
    art = tmp_path / "art"
    monkeypatch.setenv("SEARCH_ARTIFACTS", str(art))
    before = set(tmp_path.parent.rglob("*"))
    for i, name in enumerate(NAMES):
        text = f"name = {json.dumps(name, ensure_ascii=False)}\n" + TINY_DIGITS
        write_study(f"s{i}", text.replace("epochs = 3", "epochs = 1"))
        args = ["run", "--study", f"s{i}", "--trials", "1", "--storage", url, "-q"]
        assert main(args) == 0, capsys.readouterr().err
    assert set(optuna.get_all_study_names(url)) == set(NAMES)
    for name in NAMES:
        assert load(url, name).trials[0].state in FINISHED

    capsys.readouterr()
    write_study("long", f'name = "{"y" * 600}"\n' + TINY_DIGITS)
    assert main(["run", "--study", "long", "--trials", "1", "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "600 characters long" in err and "at most 512" in err and len(err.splitlines()) == 1
    assert set(optuna.get_all_study_names(url)) == set(NAMES)

    new = [p for p in set(tmp_path.parent.rglob("*")) - before if p.is_file()]
    db = Storage.open(url).sqlite_path
    allowed = [art, tmp_path / "studies"] + ([db.parent] if db else [])
    outside = [p for p in new if not any(p.is_relative_to(a) for a in allowed)]
    assert outside == []
    assert [p for p in tmp_path.parent.rglob("*escape*") if art.name not in p.parts] == []


def test_sqlite_refuses_several_workers_with_the_reason_and_the_fix(
    write_study, storage_url, capsys
):
    write_study("tiny", TINY_DIGITS)
    args = ["run", "--study", "tiny", "--trials", "2", "--storage", storage_url, "--workers", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "needs PostgreSQL" in err and "database is locked" in err
    assert "docs/distributed.md" in err and "--storage postgresql" in err
    assert not Storage.open(storage_url).sqlite_path.exists()


# --------------------------------------------------------------------- the trainer's side


TINY_CFG = {"data.image_size": 8, "model.width": 8, "train.epochs": 2, "train.patience": 0}


@pytest.mark.parametrize(
    "extra",
    [{"optim.name": "adam", "sched.name": "cosine"}, {"optim.name": "sam_sgd", "sched.name": "plateau"}],
)  # fmt: skip
def test_resuming_from_an_epoch_state_equals_an_uninterrupted_run(tmp_path, extra):
    cfg = trainer.TrainConfig.from_flat({**TINY_CFG, **extra})
    whole = trainer.train(cfg)
    last, kept = tmp_path / "last.safetensors", tmp_path / "kept.safetensors"

    class KeepAfterEpoch1:  # at epoch 2's report the file holds the state after epoch 1
        def report(self, epoch, metrics):
            if epoch == 2:
                kept.write_bytes(last.read_bytes())

        def should_stop(self):
            return False

    trainer.train(cfg, reporter=KeepAfterEpoch1(), last_checkpoint_path=last)
    assert not last.exists()  # removed when the run ends
    seen = []

    class Record:
        def report(self, epoch, metrics):
            seen.append(epoch)

        def should_stop(self):
            return False

    resumed = trainer.train(cfg, reporter=Record(), resume_from=kept)
    assert resumed.adjustments == {"resumed_from_epoch": 1}
    assert seen == [1, 2]  # the inherited epoch is replayed to the new reporter
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in whole.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]

    other = trainer.TrainConfig.from_flat({**TINY_CFG, **extra, "optim.lr": 0.01})
    fresh = trainer.train(other, resume_from=kept)  # another configuration's state: ignored
    assert "another configuration" in fresh.adjustments["resume_skipped"]
    assert len(fresh.history) == 2
