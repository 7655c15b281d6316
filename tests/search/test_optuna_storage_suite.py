"""Optuna's own storage tests pass against our storage (``search.store.storage.ResilientRDBStorage``).

The tests come from the source distribution of the installed Optuna version, fetched once with
``pip download --no-binary :all:`` into ``$HPSEARCH_CACHE_DIR/optuna-sdist`` (default
``~/.cache/hpsearch``); only their ``tests/`` folder is unpacked, so the installed Optuna is the
one under test. ``tests/optuna_storage_plugin.py`` switches the class and picks the modes.

    python -m pytest -m optuna_suite tests/search/test_optuna_storage_suite.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import optuna
import pytest
from pgserver import pg_fixture, pg_url_fixture  # noqa: F401  (fixtures pg, pg_url)

pytestmark = [pytest.mark.optuna_suite, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
# read at import, before the test fixtures point HPSEARCH_CACHE_DIR at a fresh folder
CACHE = (
    Path(os.environ.get("HPSEARCH_CACHE_DIR") or Path.home() / ".cache" / "hpsearch")
    / "optuna-sdist"
)
SQLITE_FILES = [
    "storages_tests/test_storages.py",
    "storages_tests/test_cached_storage.py",
    "storages_tests/test_heartbeat.py",
    "storages_tests/rdb_tests/test_storage.py",
]
SERVER_FILES = ["storages_tests/test_with_server.py"]


def optuna_tests(version: str = optuna.__version__) -> Path:
    """The ``tests/`` folder of Optuna ``version``'s sdist, downloaded and unpacked once."""
    root = CACHE / f"optuna-{version}"
    if (root / ".complete").exists():
        return root / "tests"
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"optuna-{version}.tar.gz"
    if not sdist.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", "-q", "-d", str(CACHE), f"optuna=={version}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0 or not sdist.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            pytest.skip(f"cannot download the optuna {version} sdist: {lines[-1:]}")
    prefix = f"optuna-{version}/"
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml"
        ]
        tar.extractall(CACHE, members=members, filter="data")
    (root / ".complete").touch()
    return root / "tests"


def run_suite(files: list[str], *, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """Run Optuna's ``files`` with our plugin in a fresh interpreter; (counts, output)."""
    tests = optuna_tests()
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "optuna_storage_plugin", "-p", "no:cacheprovider",
         "-q", "--color=no", "-o", "addopts=", *[str(tests / f) for f in files]],
        cwd=tests.parent, env=full_env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|skipped)", summary)}
    counts["rc"] = proc.returncode
    return counts, out


def test_optunas_storage_tests_pass_against_our_storage_on_sqlite():
    counts, out = run_suite(SQLITE_FILES)
    assert counts["rc"] == 0, out[-6000:]
    built = re.search(r"RDB storages built: (\d+) search\.storage\.ResilientRDBStorage\n", out)
    assert built and int(built[1]) >= 100, out[-3000:]  # ours, and no other RDB storage
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, out[-6000:]
    assert counts["passed"] >= 180, out[-3000:]  # the selection is not hollowed out


@pytest.mark.postgres
def test_optunas_server_tests_pass_against_our_storage_on_postgresql(pg_url):
    counts, out = run_suite(SERVER_FILES, env={"TEST_DB_URL": pg_url, "TEST_DB_MODE": ""})
    assert counts["rc"] == 0, out[-6000:]
    assert counts.get("skipped", 0) == 0, out[-3000:]  # TEST_DB_URL reached them
    assert counts["passed"] >= 15, out[-3000:]
    assert re.search(r"RDB storages built: \d+ search\.storage\.ResilientRDBStorage\n", out)
