"""What ``search`` says when it refuses to run: usage errors checked before the data is read
(one ``error:`` line, exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import one_error_line

from search.cli import main

CHEAP = {
    "--trials": (["--trials", "0"], "--trials must be >= 1, but got 0"),
    "--workers": (["--trials", "2", "--workers", "0"], "--workers must be >= 1, but got 0"),
    "--timeout": (["--trials", "2", "--timeout", "-1"], "--timeout must be > 0 seconds"),
}


@pytest.mark.parametrize("flag", list(CHEAP))
def test_a_bad_count_is_named_before_the_missing_data_folder(flag, tmp_path, capsys):
    args, expected = CHEAP[flag]
    missing = tmp_path / "missing"
    rc = main(["run", "--study", "digits", *args, "--data", str(missing), "-q"])
    assert rc == 2
    line = one_error_line(capsys, expected)
    assert "not found" not in line
    assert list(tmp_path.iterdir()) == [] and list(Path.cwd().iterdir()) == []  # no storage


# --------------------------------------------------------------------------- bugs


def _break_best_command(monkeypatch, error: Exception) -> None:
    """``search best`` raises ``error`` from inside, as a bug would."""
    import search.study.lookup as lookup

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(lookup, "load_stored", broken)


BUGS = {
    "AttributeError": AttributeError("'NoneType' object has no attribute 'value'"),
    "KeyError": KeyError("val_acc"),
    "TypeError from a wrong call": None,  # made below: a real TypeError, not a raise of ours
    "ValueError from a library": None,
}


def _real_error(case: str) -> Exception:
    try:
        if case == "TypeError from a wrong call":
            len(5)  # a TypeError raised by a builtin, as a bug in our code would
        else:
            import json

            json.loads("{")  # a ValueError raised inside a library
    except Exception as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("case", list(BUGS))
def test_an_internal_error_is_one_line_saying_bug_with_the_traceback_logged(
    case, monkeypatch, write_study, tmp_path, capsys
):
    from conftest import TINY_DIGITS

    write_study("tiny", TINY_DIGITS)
    error = BUGS[case] or _real_error(case)
    _break_best_command(monkeypatch, error)
    logs = tmp_path / "cache"
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(logs))
    monkeypatch.delenv("HPSEARCH_DEBUG", raising=False)
    assert main(["best", "--study", "tiny"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: internal error, a bug in hpsearch (")
    assert type(error).__name__ in lines[0] and "please report it" in lines[0]
    assert "Traceback" not in captured.err + captured.out
    (log,) = (logs / "logs").iterdir()
    assert f"traceback in {log}" in lines[0]
    text = log.read_text()
    assert text.splitlines()[0].endswith("best --study tiny")  # the command that failed
    assert "Traceback (most recent call last)" in text and type(error).__name__ in text


@pytest.mark.parametrize("where", ["before the command", "after the command", "environment"])
def test_debug_prints_the_traceback_instead(where, monkeypatch, write_study, tmp_path, capsys):
    from conftest import TINY_DIGITS

    write_study("tiny", TINY_DIGITS)
    _break_best_command(monkeypatch, AttributeError("no attribute 'value'"))
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    argv = {
        "before the command": ["--debug", "best", "--study", "tiny"],
        "after the command": ["best", "--study", "tiny", "--debug"],
        "environment": ["best", "--study", "tiny"],
    }[where]
    if where == "environment":
        monkeypatch.setenv("HPSEARCH_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.strip().splitlines()[-1].endswith("traceback above; please report it")
    assert not (tmp_path / "cache" / "logs").exists()


def test_a_usage_error_of_our_own_stays_exit_2_with_no_log(write_study, capsys):
    from conftest import TINY_DIGITS

    write_study("tiny", TINY_DIGITS)
    assert main(["run", "--study", "tiny", "--trials", "1", "--set", "optim.lr=0"]) == 2
    one_error_line(capsys, "optim.lr must be > 0, but got 0")
    assert not (Path(os.environ["HPSEARCH_CACHE_DIR"]) / "logs").exists()


def test_deliberate_means_a_raise_statement_of_our_own_code():
    import torch

    from search.cli.main import deliberate
    from trainer import TrainConfig
    from trainer.evaluate import confusion_matrix

    def error_of(call) -> Exception:
        try:
            call()
        except Exception as exc:
            return exc
        raise AssertionError("no error")

    # a check of ours: its multi-line raise statement
    assert deliberate(error_of(lambda: TrainConfig.from_flat({"optim.lr": 0})))
    # an operation in our code that fails on a wrong argument: a bug, not a check
    wrong = error_of(lambda: confusion_matrix(torch.tensor([0]), torch.tensor([0]), "3"))
    assert isinstance(wrong, TypeError) and not deliberate(wrong)
    # raised inside a library, or by a test's own raise statement
    assert not deliberate(error_of(lambda: torch.zeros(2).view(3)))
    assert not deliberate(ValueError("never raised"))
