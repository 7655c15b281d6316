"""A normal (non-editable) install finds the shipped studies: the wheel carries ``studies/`` as
package data, and the commands read it from there, whatever the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (REPO / "studies").glob("*.toml"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The wheel built from a copy of the source files (what git does not ignore), installed into a folder of its own
    (no dependencies: the test environment's serve), and an environment that puts it first."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("hpsearch-*.whl")
    target = tmp / "site"
    _run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)])
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("SEARCH_STUDIES", None)
    return wheel, target, env


def test_the_wheel_carries_every_shipped_study(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        sorted(Path(n).stem for n in names if n.startswith("studies/") and n.endswith(".toml"))
        == SHIPPED
    )


def test_an_installed_wheel_lists_and_resolves_the_shipped_studies(installed, tmp_path):
    _, target, env = installed
    elsewhere = tmp_path / "elsewhere"  # no ./studies here
    elsewhere.mkdir()
    where = _run(
        [
            sys.executable,
            "-c",
            "import search, studies; print(search.__file__); print(studies.__file__)",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where  # not the source tree

    listed = _run(
        [sys.executable, "-m", "search.cli", "list", "--storage", "sqlite:///x.db"],
        cwd=elsewhere,
        env=env,
    )
    for name in SHIPPED:
        assert name in listed.stdout, f"{name} missing from `search list`:\n{listed.stdout}"
    space = _run(
        [sys.executable, "-m", "search.cli", "space", "--study", "digits"], cwd=elsewhere, env=env
    )
    assert "optim.lr" in space.stdout
    assert (
        str(target)
        in _run(
            [
                sys.executable,
                "-c",
                "from search.study.studyfile import find_study_file as f; print(f('digits'))",
            ],
            cwd=elsewhere,
            env=env,
        ).stdout
    )
