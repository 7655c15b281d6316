"""What ``search`` says when it refuses to run: usage errors checked before the data is read
(one ``error:`` line, exit code 2)."""

from __future__ import annotations

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
