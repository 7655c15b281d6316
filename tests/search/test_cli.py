"""The ``search`` command line: --set, --enqueue, best --json, Optuna's own CLI, every bad
input (one ``error:`` line, exit code 2, storage untouched) and Ctrl-C."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import trainer
from search.cli import main

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def load(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def run(url: str, *args: str, study: str = "tiny", trials: int = 2) -> int:
    return main(["run", "--study", study, "--trials", str(trials), "-q", "--storage", url, *args])


def test_set_fixes_a_parameter_and_enqueue_runs_first(write_study, storage_url, capsys, fake_train):
    write_study("tiny", TINY_DIGITS)
    rc = run(
        storage_url,
        "--set",
        "optim.lr=0.004",
        "--set",
        "train.seed=3",
        "--enqueue",
        "loss.name=label_smoothing,loss.smoothing=0.05",
        trials=3,
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "best       trial" in out and "optuna-dashboard" in out
    study = load(storage_url)
    assert len(study.get_trials(states=FINISHED)) == 3
    first = study.trials[0]
    assert first.params["loss.name"] == "label_smoothing"
    assert first.params["loss.smoothing"] == 0.05
    assert first.user_attrs["config"]["loss.smoothing"] == 0.05
    for t in study.trials:
        assert "optim.lr" not in t.params  # fixed: never shown to the sampler
        assert "optim.lr" not in t.distributions
        assert t.user_attrs["config"]["optim.lr"] == 0.004
        assert t.user_attrs["config"]["train.seed"] == 3
    # the sampler still draws the other parameters
    assert len({t.params["model.dropout"] for t in study.trials}) == 3
    # and training got the pins (training itself is faked: nothing here depends on it)
    assert [(c.optim.lr, c.train.seed) for c in fake_train.calls] == [(0.004, 3)] * 3


def test_best_json_and_optuna_cli(write_study, storage_url, capsys):
    write_study("tiny", TINY_DIGITS)
    assert run(storage_url, trials=2) == 0
    capsys.readouterr()

    assert main(["best", "--study", "tiny", "--storage", storage_url, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    study = load(storage_url)
    best = study.best_trial
    assert rec["study"] == "tiny"
    assert rec["trial"] == best.number and rec["value"] == best.value
    assert rec["value"] == max(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert rec["metric"] == "val_acc"
    assert rec["params"] == best.params
    assert rec["config"] == best.user_attrs["config"]
    assert sum(rec["trials"].values()) == 2
    assert Path(rec["checkpoint"]).is_file()

    optuna_cli = Path(sys.executable).parent / "optuna"
    proc = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "tiny", "--storage", storage_url, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["number"] for r in rows) == [0, 1]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    by_number = {r["number"]: r for r in rows}
    assert by_number[best.number]["value"] == {"val_acc": best.value}  # the metric's name


def test_best_of_an_unknown_study_is_an_error(write_study, storage_url, capsys):
    write_study("tiny", TINY_DIGITS)
    optuna.create_study(study_name="tiny", storage=storage_url)
    assert main(["best", "--study", "tny", "--storage", storage_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Did you mean 'tiny'" in err[0]


# --------------------------------------------------------------------------- bad input

BROKEN_TOML = 'space = "digits"\n\n[data]\nname = "digits"\nimage_size = = 8\n'

# (study, extra args, what the one error line must say)
BAD_INPUT = {
    "unknown study": ("tiny_digit", [], ["unknown study 'tiny_digit'", "tiny_digits", "digits"]),
    "unknown backbone": (
        "tiny_digits",
        ["--set", "model.backbone=resnt18"],
        ["unknown backbone 'resnt18'", "Did you mean 'resnet18'"],
    ),
    "unknown loss": (
        "tiny_digits",
        ["--set", "loss.name=fcal"],
        ["unknown loss 'fcal'", "Did you mean 'focal'", "ls_focal"],
    ),
    "unknown optimizer": (
        "tiny_digits",
        ["--set", "optim.name=adm"],
        ["unknown optimizer 'adm'", "Did you mean 'adam'", "sam_sgd"],
    ),
    "unknown enqueued optimizer": (
        "tiny_digits",
        ["--enqueue", "optim.lr=0.01,optim.name=sdg"],
        ["unknown optimizer 'sdg'", "Did you mean 'sgd'"],
    ),
    "unknown key": ("tiny_digits", ["--set", "optim.l=0.1"], ["Did you mean 'optim.lr'"]),
    "malformed toml": ("broken", [], ["broken.toml: malformed TOML", "line 5"]),
    "lr zero": ("tiny_digits", ["--set", "optim.lr=0"], ["optim.lr must be > 0, but got 0"]),
    "lr negative": (
        "tiny_digits",
        ["--set", "optim.lr=-1e-3"],
        ["optim.lr must be > 0, but got -0.001"],
    ),
    "batch size": (
        "tiny_digits",
        ["--set", "data.batch_size=0"],
        ["data.batch_size must be >= 1, but got 0"],
    ),
    "dropout": (
        "tiny_digits",
        ["--set", "model.dropout=1.5"],
        ["model.dropout must be in [0, 1), but got 1.5"],
    ),
    "wrong type": (
        "tiny_digits",
        ["--set", "data.batch_size=big"],
        ["data.batch_size must be int, but got 'big'"],
    ),
    "zero trials": ("tiny_digits", ["--trials", "0"], ["--trials must be >= 1, but got 0"]),
    "heartbeat zero": (
        "tiny_digits",
        ["--heartbeat", "0"],
        ["--heartbeat must be > 0 seconds, but got 0.0"],
    ),
    "grace not past the heartbeat": (
        "tiny_digits",
        ["--heartbeat", "5", "--grace", "5"],
        ["--grace must be longer than the heartbeat (5.0 s), but got 5.0"],
    ),
    "negative retries": (
        "tiny_digits",
        ["--retries", "-1"],
        ["--retries must be >= 0, but got -1"],
    ),
}


def _snapshot(db: Path) -> tuple[str, list]:
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    study = optuna.load_study(study_name="tiny_digits", storage=f"sqlite:///{db}")
    trials = [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.trials]
    return digest, trials


@pytest.fixture
def studies(write_study):
    write_study("tiny_digits", TINY_DIGITS)
    write_study("broken", BROKEN_TOML)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_on_an_existing_study(case, studies, tmp_path, storage_url, capsys):
    study, args, expected = BAD_INPUT[case]
    db = tmp_path / "studies.db"
    existing = optuna.create_study(
        study_name="tiny_digits", storage=storage_url, direction="maximize"
    )
    existing.add_trial(
        optuna.trial.create_trial(
            params={"optim.lr": 0.01},
            distributions={"optim.lr": FloatDistribution(1e-4, 0.1, log=True)},
            value=0.5,
            user_attrs={"status": "complete"},
        )
    )
    del existing
    before = _snapshot(db)
    if "--trials" not in args:
        args = ["--trials", "2", *args]
    rc = main(["run", "--study", study, "-q", "--storage", storage_url, *args])
    assert rc == 2
    one_error_line(capsys, *expected)
    assert _snapshot(db) == before
    assert not (tmp_path / "studies.db.artifacts").exists()


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_creates_no_storage(case, studies, tmp_path, capsys):
    study, args, expected = BAD_INPUT[case]
    if "--trials" not in args:
        args = ["--trials", "2", *args]
    rc = main(["run", "--study", study, "-q", *args])  # the default storage in the cwd
    assert rc == 2
    one_error_line(capsys, *expected)
    assert list(Path.cwd().iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studies"]


def test_unwritable_storage_path(studies, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir"
    url = f"sqlite:///{missing / 'studies.db'}"
    rc = main(["run", "--study", "tiny_digits", "--trials", "1", "-q", "--storage", url])
    assert rc == 2
    one_error_line(capsys, "cannot create the SQLite storage", str(missing), "does not exist")
    assert not (tmp_path / "no").exists()


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` unwritable for this process: without write bits, or, for root (who writes
    anywhere, as CI runs), a read-only bind mount of it onto itself; skips where mounting is
    refused (a container without the right)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mount = ["mount", "--bind", str(folder), str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("root, and mount --bind is refused here")
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(folder)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("root, and a read-only remount is refused here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_storage_directory(studies, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    with _read_only(ro):
        with pytest.raises(OSError):  # really unwritable, for root too
            (ro / "probe").touch()
        url = f"sqlite:///{ro / 'studies.db'}"
        assert main(["run", "--study", "tiny_digits", "--trials", "1", "--storage", url]) == 2
        one_error_line(capsys, "is not writable")
        assert list(ro.iterdir()) == []


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_marks_the_trial_failed_and_a_rerun_completes(
    write_study, storage_url, monkeypatch, capsys
):
    write_study("tiny", TINY_DIGITS)
    real_train = trainer.train

    def interrupted_train(cfg, *, reporter=None, **kwargs):
        class InterruptAfterFirstEpoch:
            def report(self, epoch, metrics):
                reporter.report(epoch, metrics)
                raise KeyboardInterrupt

            def should_stop(self):
                return reporter.should_stop()

        return real_train(cfg, reporter=InterruptAfterFirstEpoch(), **kwargs)

    monkeypatch.setattr("search.experiments.objective.trainer.train", interrupted_train)
    assert run(storage_url, trials=2) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err

    (trial,) = load(storage_url).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "interrupted"
    assert "interrupted" in trial.user_attrs["reason"]
    assert list(trial.intermediate_values) == [1]  # the epoch reported before Ctrl-C

    monkeypatch.setattr("search.experiments.objective.trainer.train", real_train)
    assert run(storage_url, trials=2) == 0
    study = load(storage_url)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL
    assert sum(s in FINISHED for s in states) == 2
    assert TrialState.RUNNING not in states
    assert len(states) == 3


def test_tta_and_tta_views_together_are_refused_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--study", "x", "--data", "d", "--out", "o", "--tta", "--tta-views",
              "flips"])  # fmt: skip
    assert stop.value.code == 2
    assert "argument --tta-views: not allowed with argument --tta" in capsys.readouterr().err


def test_a_wrapped_storage_error_is_told_in_the_databases_words_with_the_password_masked():
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    from search.store.storage import error_line

    dropped = Exception(
        "server closed the connection unexpectedly (postgresql://hp:s3cret@db:5432/x)\nmore"
    )
    try:
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, dropped)
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc
    except StorageInternalError as exc:
        line = error_line(exc)
    assert line.startswith("server closed the connection unexpectedly")
    assert "s3cret" not in line and "more" not in line
