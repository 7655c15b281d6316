"""MySQL URLs: Optuna takes them, hpsearch's locks and claims are untested there, so they are
refused in one line with the URLs to use instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_DIGITS, one_error_line

from search.cli import main
from search.store import Storage


@pytest.mark.parametrize("url", ["mysql://u:secret@db/s", "mysql+pymysql://u:secret@db:3306/s"])
def test_a_mysql_url_is_refused_with_the_fix(url):
    with pytest.raises(ValueError, match=r"^MySQL storage .* is not supported") as info:
        Storage.open(url)
    message = str(info.value)
    assert "postgresql+psycopg://USER@HOST:PORT/DB" in message and "sqlite:///FILE" in message
    assert "secret" not in message  # the password is masked


def test_search_run_on_mysql_is_a_usage_error_before_anything_runs(write_study, capsys):
    write_study("tiny", TINY_DIGITS)
    url = "mysql+pymysql://u:secret@db.invalid/s"
    assert main(["run", "--study", "tiny", "--trials", "1", "-q", "--storage", url]) == 2
    line = one_error_line(capsys, "MySQL storage", "is not supported", "postgresql+psycopg")
    assert "secret" not in line
    assert list(Path.cwd().iterdir()) == []
