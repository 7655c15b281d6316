"""Our storage class as Optuna's tools use it: it pickles into a working storage in another
process, with its retries; and it refuses an Optuna that lacks a method it wraps. The storage
object resolved from a URL: its backend, lock and artifact places from the parsed URL."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS
from faultkit import STORAGES, storage_param
from optuna.trial import TrialState
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from pgserver import pg_fixture, pg_url_fixture  # noqa: F401  (fixtures pg, pg_url)

from search.cli import main
from search.store import Storage, _optuna_internals
from search.store import storage as storage_mod

CHILD = textwrap.dedent(
    """
    import pickle, sys
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState
    from search.store.storage import ResilientRDBStorage

    with open(sys.argv[1], "rb") as f:
        storage = pickle.load(f)
    assert type(storage) is ResilientRDBStorage, type(storage)
    sid = storage.get_study_id_from_name("pickled")
    (first,) = storage.get_all_trials(sid)
    print("read", first.params["x"], first.user_attrs["by"], flush=True)
    tid = storage.create_new_trial(sid)
    storage.set_trial_param(tid, "x", 0.25, FloatDistribution(0.0, 1.0))
    storage.set_trial_user_attr(tid, "by", "child")
    print("wrote", flush=True)
    if sys.argv[2] == "outage":
        sys.stdin.readline()  # the parent has stopped the database server meanwhile
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.5])
        print("told through the outage", flush=True)
    else:
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.5])
    """
)


def _study_with_one_trial(url: str) -> storage_mod.ResilientRDBStorage:
    storage = storage_mod.open_storage(url)
    study = optuna.create_study(study_name="pickled", storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("by", "parent")
    study.tell(trial, 1.0)
    return storage


def _check_written(url: str) -> None:
    trials = optuna.load_study(study_name="pickled", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert (trials[1].params, trials[1].user_attrs, trials[1].value) == (
        {"x": 0.25},
        {"by": "child"},
        0.5,
    )


@pytest.fixture(params=STORAGES)
def url(request, tmp_path):
    return storage_param(request, tmp_path)


def test_an_opened_storage_pickles_into_a_working_storage_in_a_new_process(url, tmp_path):
    storage = _study_with_one_trial(url)
    expected = storage.get_all_trials(storage.get_study_id_from_name("pickled"))[0]
    blob = tmp_path / "storage.pkl"
    blob.write_bytes(pickle.dumps(storage))
    storage.engine.dispose()

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(blob), "plain"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["read", str(expected.params["x"]), "parent", "wrote"]
    _check_written(url)


@pytest.mark.postgres
def test_an_unpickled_storage_keeps_retrying_through_a_database_outage(pg, pg_url, tmp_path):
    storage = _study_with_one_trial(pg_url)
    blob = tmp_path / "storage.pkl"
    blob.write_bytes(pickle.dumps(storage))
    storage.engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(blob), "outage"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stopped = False
    try:
        assert proc.stdout.readline().startswith("read")
        assert proc.stdout.readline() == "wrote\n"
        pg.pg_ctl("stop", "-m", "fast")
        stopped = True
        proc.stdin.write("go\n")
        proc.stdin.flush()
        warning = proc.stdout.readline()  # the child's first failed attempt
        assert "lost the connection to the storage 127.0.0.1:" in warning, warning
        assert "retrying for up to" in warning
        pg.pg_ctl("start")
        stopped = False
        out, _ = proc.communicate(timeout=120)
    finally:
        if stopped:
            pg.pg_ctl("start")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "told through the outage" in out
    _check_written(pg_url)


def test_an_optuna_without_a_wrapped_method_is_refused_at_import():
    class Shrunk(optuna.storages.RDBStorage):
        pass

    class Ours(Shrunk):
        pass

    with pytest.raises(ImportError, match=r"has no RDBStorage\.no_such_method; hpsearch supports"):
        storage_mod._wrap_methods(Ours, ("get_trial", "no_such_method"))


def test_the_supported_optuna_range_is_stated_once_and_tested_at_both_ends():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    repo = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    (optuna_req,) = [Requirement(d) for d in deps if Requirement(d).name == "optuna"]
    assert optuna_req.specifier == SpecifierSet(_optuna_internals.SUPPORTED)
    lowest = re.search(r"^\s*OPTUNA_LOWEST=(\S+)$", (repo / "scripts/setup.sh").read_text(), re.M)
    lower_bound = next(s.version for s in optuna_req.specifier if s.operator == ">=")
    assert lowest and lowest[1].startswith(lower_bound)
    assert optuna.__version__ in optuna_req.specifier


# --------------------------------------------------------------------- the storage object


def test_a_sqlite_url_with_a_driver_gets_its_lock_and_artifacts_beside_the_file(write_study):
    """``sqlite+pysqlite:///p.db`` is SQLite like ``sqlite:///p.db``: the lock file beside
    ``p.db`` and the artifacts in ``p.db.artifacts``, not in ./hpsearch-artifacts."""
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 1"))
    here = Path.cwd()
    storage = Storage.open("sqlite+pysqlite:///p.db")
    assert (storage.backend, storage.sqlite_path) == ("sqlite", here / "p.db")
    assert storage.url == f"sqlite+pysqlite:///{here / 'p.db'}"  # absolute: usable anywhere
    assert storage.artifact_dir("tiny").parent == here / "p.db.artifacts"
    assert storage.artifact_store_dir == here / "p.db.artifacts" / "artifact-store"

    args = ["run", "--study", "tiny", "--trials", "1", "-q"]
    assert main([*args, "--storage", "sqlite+pysqlite:///p.db"]) == 0

    assert (here / "p.db").is_file() and (here / "p.db.lock").is_file()
    assert list((storage.artifact_dir("tiny") / "checkpoints").glob("trial-0*.safetensors"))
    assert not (here / "hpsearch-artifacts").exists()


def test_the_sqlite_lock_excludes_a_second_holder_until_the_first_lets_go(storage_url):
    storage = Storage.open(storage_url)
    held, order = threading.Event(), []

    def first() -> None:
        with storage.exclusive("claim:x"):
            held.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    with Storage.open(storage_url).exclusive("claim:x"):  # another object, as another worker
        order.append("second in")
    t.join()
    assert order == ["first out", "second in"]


def test_without_a_place_for_the_lock_file_the_lock_lets_the_caller_go_on(tmp_path):
    storage = Storage.open(f"sqlite:///{tmp_path / 'gone' / 'p.db'}")
    with storage.exclusive("setup") as conn:  # nothing will be written there either
        assert conn is None
    assert not (tmp_path / "gone").exists()


def test_a_server_url_is_parsed_once_and_opened_on_first_use():
    storage = Storage.open("postgres://hp:p%40ss@db.example:6543/studies")
    assert storage.url == "postgresql+psycopg://hp:p%40ss@db.example:6543/studies"
    assert (storage.backend, storage.sqlite_path, storage.exists) == ("postgresql", None, True)
    assert storage.masked == "postgresql+psycopg://hp:***@db.example:6543/studies"
    assert storage.where == "db.example:6543/studies"
    assert storage.artifact_dir("x").parent == Path.cwd() / storage_mod.ARTIFACTS_DIR
    assert storage._rdb is None  # nothing connected yet
    again = pickle.loads(pickle.dumps(storage))
    assert (type(again), again.url) == (Storage, storage.url)
    assert Storage.open(storage) is storage


def test_the_optuna_storage_is_opened_once_per_storage_object(storage_url):
    storage = Storage.open(storage_url)
    assert storage.rdb is storage.rdb
    assert storage.engine is storage.rdb.engine


@pytest.mark.parametrize("url", ["bogus", "http://example.org/db", "oracle://u@h/db"])
def test_an_unsupported_url_is_refused_in_one_line_naming_the_urls_we_take(url):
    with pytest.raises(ValueError, match=r"^unsupported storage URL .*; use sqlite:///FILE"):
        Storage.open(url)
