"""Shared test setup: offline hub, private storage/cache/study dirs, small helpers."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # timm would otherwise retry the hub for ~47 s
# The test models are tiny: one thread is as fast as two on an idle machine and far faster
# when the cores are shared (two spinning OpenMP threads per process thrash).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
# tests/trainer, tests/search, tests/spaces would otherwise shadow the real packages when
# pytest is started as `pytest` rather than `python -m pytest`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No test reads the user's storage, caches or studies, or writes into the repo."""
    work = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(work)
    for var in ("SEARCH_STORAGE", "SEARCH_STUDIES", "SEARCH_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield work


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """On a GPU machine, tests not marked ``cuda`` train on the CPU all the same: the exact-
    equality tests hold there only (cuDNN's autotuned kernels and scatter_add_'s atomics are
    not bitwise reproducible on a GPU). Worker processes a test starts inherit the hidden GPUs."""
    if request.node.get_closest_marker("cuda") is not None:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose: no warning either
    torch = sys.modules.get("torch")
    if torch is not None:  # this process may have started CUDA already
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def write_study(tmp_path, monkeypatch):
    """write_study(name, toml_text) -> path; the study becomes visible to `search`."""
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    monkeypatch.setenv("SEARCH_STUDIES", str(studies))

    def write(name: str, text: str) -> Path:
        path = studies / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


# A digits study small enough for a unit test: 8 px images, tiny CNN, 2-3 epochs.
TINY_DIGITS = """
description = "tiny digits for tests"
space = "digits"

[data]
name = "digits"
image_size = 8

[budget]
epochs = 3
patience = 2

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[fixed]
"model.backbone" = "small_cnn"
"model.width" = 8
"optim.name" = "adam"
"data.batch_size" = 128
"""


def one_error_line(capsys, *expected: str) -> str:
    """What a refused command printed: exactly one ``error: ...`` line on stderr (no
    traceback anywhere), containing each of ``expected``; returns the line."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# Python's default warning format ("path/to/file.py:326: SomeWarning: ...") or a traceback
# line must never reach a user: every command prints warnings as one "warning: ..." line.
_SOURCE_LINE = re.compile(r"\S+\.py:\d+: \w*(Warning|Error)\b|^\s*File \".+\.py\", line \d+")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.passed:
        return
    for title, text in report.sections:
        if not title.startswith("Captured std"):
            continue
        for line in text.splitlines():
            if _SOURCE_LINE.search(line):
                report.outcome = "failed"
                report.longrepr = f"output shows a source path with a line number ({title}): {line}"
                return


@pytest.fixture
def fake_train(monkeypatch):
    """Replace ``trainer.train`` (as every search command calls it) by a ``FakeTrain``; for
    tests of search policy whose outcome does not depend on real training. Returns it."""
    from faketrain import FakeTrain

    import trainer

    fake = FakeTrain()
    monkeypatch.setattr(trainer, "train", fake)
    return fake
