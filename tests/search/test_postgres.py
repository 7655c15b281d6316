"""Distributed search on a real PostgreSQL (``tests/pgserver.py`` starts one on 127.0.0.1):
several workers, an exact budget, credentials that never leak, a database that restarts or
cannot be reached, a paused worker, SIGTERM to ``--workers``."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import TINY_DIGITS
from faultkit import (
    FAST,
    FAST_OPTIONS,
    FINISHED,
    ZONES,
    Watch,
    finish,
    load,
    quiet,
    spawn,
    states,
    time_zone,
    wait_for,
)
from optuna.trial import TrialState
from pgserver import ENCODED, PASSWORD, USER, free_port, pg_fixture, pg_url_fixture  # noqa: F401

from search.cli import main
from search.experiments.run import plan_run, prepare_study, run_study
from search.store import storage as storage_mod
from search.study.studyfile import load_study

pytestmark = pytest.mark.postgres
SLOW_EPOCHS = TINY_DIGITS.replace("epochs = 3", "epochs = 2")


def run(name: str, url: str, n: int, **plan_kwargs) -> optuna.Study:
    plan = plan_run(load_study(name), storage=url, **plan_kwargs)
    return run_study(plan, n_trials=n, progress=quiet(), options=FAST_OPTIONS)


def no_secret(text: str) -> None:
    assert PASSWORD not in text and ENCODED not in text


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_workers_fill_exactly_n_trials_through_a_database_restart(write_study, pg, pg_url):
    write_study("tiny", SLOW_EPOCHS)
    watch = Watch(pg_url, "tiny")
    proc = spawn(
        ["run", "--study", "tiny", "--trials", "4", "--workers", "2", "-q", "--storage", pg_url,
         "--heartbeat", "0.5", "--grace", "10"],
        storage="sqlite:///unused.db",
        faults="epoch_sleep=1.0",  # 4 trials take one worker > 12 s: the other one joins in
    )  # fmt: skip
    try:
        kids = wait_for(lambda: len(children_of(proc.pid)) == 2 and children_of(proc.pid),
                        timeout=30, what="two worker processes", proc=proc)  # fmt: skip
        for kid in kids:  # the password travels in the environment, not on a command line
            no_secret(Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace"))
        # both workers in a trial before the restart (one worker runs one trial at a time), so
        # the restart cuts two running trials, not a worker still starting up
        wait_for(lambda: sum(t.state == TrialState.RUNNING for t in watch.trials()) == 2,
                 timeout=60, what="a trial running in each worker", proc=proc)  # fmt: skip
        wait_for(lambda: watch.running_with_epochs(1), timeout=60, what="epoch 1", proc=proc)
        pg.restart()  # every connection is cut; the server is back a moment later
        code, out = finish(proc, 180)
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out
    no_secret(out)
    assert "started 2 workers" in out and "[w0]" in out and "[w1]" in out
    study = load(pg_url, "tiny")
    # exactly N, nothing more; and nobody lost a trial: the heartbeats went on after the
    # restart, so no trial was failed as stale
    assert states(study) == [TrialState.COMPLETE] * 4, [t.user_attrs for t in study.trials]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both did work
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # no duplicates
    assert out.count("best       trial") == 1  # the summary, printed once by the launcher


def _worker(plan, n: int, barrier) -> None:
    barrier.wait()  # all start at the same instant on an empty database
    run_study(plan, n_trials=n, progress=quiet(), options=FAST_OPTIONS)


def test_workers_starting_together_make_one_schema_one_study_and_stop_at_n(write_study, pg_url):
    """Every trial is pruned (the loss diverges at once): the workers still stop at N."""
    import torch._dynamo  # noqa: F401  (imported once here, not in every forked worker)

    write_study("tiny", TINY_DIGITS)
    plan = plan_run(load_study("tiny"), storage=pg_url, fixed={"optim.lr": 1e30})
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_worker, args=(plan, 5, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert optuna.get_all_study_names(pg_url) == ["tiny"]
    study = load(pg_url, "tiny")
    assert states(study) == [TrialState.PRUNED] * 5
    assert all(t.user_attrs["status"] == "nonfinite_loss" for t in study.trials)
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM version_info")).scalar() == 1
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("tz", ZONES)
def test_paused_worker_late_result_is_discarded(write_study, pg_url, tz):
    """Both workers in a time zone far from UTC: the silent one is failed after the grace
    period by the database's clock, neither at once nor never."""
    write_study("tiny", SLOW_EPOCHS)
    watch = Watch(pg_url, "tiny")
    proc = spawn(
        ["run", "--study", "tiny", "--trials", "2", "-q", *FAST],
        storage=pg_url,
        faults="epoch_sleep=1.0",
        env={"TZ": tz},
    )
    try:
        victim = wait_for(
            lambda: watch.running_with_epochs(1), timeout=60, what="epoch 1", proc=proc
        )
        proc.send_signal(signal.SIGSTOP)  # frozen past the grace period (2 s)
        with time_zone(tz):
            study = run("tiny", pg_url, 2)  # meanwhile another worker fills the study
        assert sum(s in FINISHED for s in states(study)) == 2
        proc.send_signal(signal.SIGCONT)
        code, out = finish(proc, 60)
    finally:
        watch.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    assert code == 0, out
    assert "Traceback" not in out
    assert f"trial {victim.number}: " in out and "late result is discarded" in out
    study = load(pg_url, "tiny")
    assert sum(s in FINISHED for s in states(study)) == 2  # no duplicate counted
    assert study.trials[victim.number].state == TrialState.FAIL
    assert study.trials[victim.number].user_attrs["status"] == "lost"
    silence = re.fullmatch(
        r"worker lost: no heartbeat for (\d+) s \(grace 2 s\); the worker was killed, crashed "
        r"or froze",
        study.trials[victim.number].user_attrs["reason"],
    )
    assert silence and 2 <= int(silence[1]) < 600  # seconds, not the zone's hours
    assert TrialState.RUNNING not in states(study)


def test_sigterm_to_the_workers_launcher_fails_running_trials_and_a_rerun_completes(
    write_study, pg_url
):
    # trials of >= 20 s (20 epochs of >= 1 s, no early stopping): neither ends before the
    # signal, however late the second worker reaches its first epoch
    write_study(
        "tiny",
        TINY_DIGITS.replace("epochs = 3", "epochs = 20").replace("patience = 2", "patience = 0"),
    )
    watch = Watch(pg_url, "tiny")
    proc = spawn(
        ["run", "--study", "tiny", "--trials", "2", "--workers", "2", "-q", *FAST],
        storage=pg_url,
        faults="epoch_sleep=1.0",
    )
    try:
        wait_for(
            lambda: sum(
                t.state == TrialState.RUNNING and len(t.intermediate_values) >= 1
                for t in watch.trials()
            ) == 2,
            timeout=60, what="both workers past epoch 1", proc=proc,
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc, 60)
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
    assert code == 143, out
    assert "Traceback" not in out
    study = load(pg_url, "tiny")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2
    assert all(t.user_attrs["reason"] == "terminated by SIGTERM" for t in failed)
    assert TrialState.RUNNING not in states(study)
    study = run("tiny", pg_url, 2)
    assert sum(s in FINISHED for s in states(study)) == 2


# --------------------------------------------------------------------- connecting


def test_unreachable_database_is_one_line_naming_host_and_port_exit_2(write_study, pg, capsys):
    write_study("tiny", TINY_DIGITS)
    port = free_port()
    cases = [
        (f"postgresql+psycopg://{USER}:{ENCODED}@127.0.0.1:{port}/db", f"127.0.0.1:{port}/db"),
        (pg.url("postgres").replace(ENCODED, "wrong-" + ENCODED), "password authentication"),
        (pg.url("no_such_db"), 'database "no_such_db" does not exist'),
    ]
    for url, expected in cases:
        assert main(["run", "--study", "tiny", "--trials", "1", "--storage", url]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: cannot connect to the storage 127.0.0.1:")
        assert expected in lines[0]
        no_secret(out + err)


def test_connections_give_up_on_a_silent_server_after_the_connect_timeout(pg_url):
    """A server that drops packets instead of refusing would hang libpq's default connect
    forever; every connection is opened with a bounded connect timeout."""
    storage = storage_mod.open_storage(pg_url)
    try:
        with storage.engine.connect() as conn:
            params = conn.connection.driver_connection.info.get_parameters()
    finally:
        storage.engine.dispose()
    assert params["connect_timeout"] == str(storage_mod.CONNECT_TIMEOUT)


def test_credentials_from_pgpass_or_environment(write_study, pg, tmp_path, monkeypatch, capsys):
    write_study("tiny", TINY_DIGITS)
    db = pg.new_database()
    url = pg.url(db, password=False)  # postgresql+psycopg://hp@127.0.0.1:PORT/DB
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    assert main(["run", "--study", "tiny", "--trials", "1", "--storage", url]) == 2
    assert "no password supplied" in capsys.readouterr().err

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    prepare_study(plan_run(load_study("tiny"), storage=url))
    monkeypatch.delenv("PGPASSWORD")

    pgpass = tmp_path / "pgpass"
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"127.0.0.1:{pg.port}:{db}:{USER}:{escaped}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.setenv("SEARCH_STORAGE", url)
    _, study = prepare_study(plan_run(load_study("tiny")))
    assert study.study_name == "tiny"


def test_the_password_never_reaches_output_notes_or_storage(write_study, pg, pg_url, capsys):
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 1"))
    args = ["--study", "tiny", "--storage", pg_url]
    assert main(["run", *args, "--trials", "1"]) == 0
    assert main(["best", *args]) == 0
    assert main(["best", *args, "--json"]) == 0
    assert main(["list", "--storage", pg_url]) == 0
    assert main(["run", *args, "--trials", "1", "--set", "optim.lr=-1"]) == 2
    out, err = capsys.readouterr()
    no_secret(out + err)
    assert "hp:***@127.0.0.1" in out + err
    assert storage_mod.redact(f"x {PASSWORD} y", pg_url) == "x *** y"
    engine = sqlalchemy.create_engine(pg_url)
    meta = sqlalchemy.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:  # study and trial attributes, notes, params: all of it
        dump = "\n".join(str(row) for t in meta.sorted_tables for row in conn.execute(t.select()))
    engine.dispose()
    assert "tiny" in dump
    no_secret(dump)
    no_secret(os.environ.get("SEARCH_STORAGE", ""))


def test_a_frozen_lock_holder_cannot_block_the_other_workers(pg_url):
    """A worker paused while it holds the claim lock: the server ends its idle transaction
    after the hold limit, so the others get the lock; the frozen one sees an error."""
    import threading

    held, errors = threading.Event(), []

    def frozen():
        try:
            with storage_mod.Storage.open(pg_url).exclusive("claim:x", hold_limit=1.0):
                held.set()
                time.sleep(8)  # idle in transaction, as a SIGSTOPped process would be
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=frozen)
    t.start()
    held.wait(10)
    start = time.monotonic()
    with storage_mod.Storage.open(pg_url).exclusive("claim:x", hold_limit=1.0):
        waited = time.monotonic() - start
    t.join()
    # the hold limit (1 s) freed the lock, not the end of the frozen holder's 8 s sleep
    assert waited < 6
    assert errors and storage_mod._transient(errors[0], pg_url)
