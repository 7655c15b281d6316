"""pytest plugin for ``scripts/mutation.sh`` only: a mutant's likely killers run first.

mutmut's fork-server runner (the one that keeps torch safe to fork) hands pytest a mutant's
tests in set order, so a mutant that one quick test kills often first pays for the slow
ones. This plugin orders the collected tests: first those that killed another mutant of
the same function earlier in the run (mutants of one function are judged one after the
other, and a test that catches one wrong line there often catches its neighbours), then
the rest; each group fastest first by the durations mutmut measured in its traced run. It
reads those from mutmut's own ``mutmut-stats.json`` in the working folder (mutmut has no
public API for them; this module is the one place that reads the file). Before the traced
run there is no file and no order. The killers are kept in ``../mutant-killers.tsv``.

It also freezes the garbage collector's view of the fork server's heap once the server has
collected the tests: each forked mutant then collects only what its own tests allocate,
not torch's and pytest's objects again (mutmut's plain fork runner does the same). And it
writes each mutant's seconds, tests run and exit status to ``../mutant-times.tsv`` (a
mutant stopped at its time limit writes nothing), for the report of where the time went.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

STATS = Path("mutmut-stats.json")
TIMES = Path("../mutant-times.tsv")
KILLERS = Path("../mutant-killers.tsv")  # function, then the test that killed a mutant of it
_started = [0.0, 0]  # monotonic start, tests run
_failed: list[str] = []  # the tests that failed in this mutant's run (-x: at most one)


_DURATIONS: dict[str, float] = {}  # read once, in the fork server's warm-up: mutants inherit


def _durations() -> dict[str, float]:
    if not _DURATIONS:  # none before the traced run has written the file
        try:
            _DURATIONS.update(json.loads(STATS.read_text())["duration_by_test"])
        except (OSError, ValueError, KeyError):
            pass
    return _DURATIONS


def _mutant() -> str:
    """The mutant this run judges, or "" for the traced and the forced-fail runs."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    return mutant if "__mutmut_" in mutant else ""


def _function(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0]


def _killers(function: str) -> set[str]:
    try:  # small: one line per killed mutant; appended to by both jobs, so read afresh
        lines = KILLERS.read_text().splitlines()
    except OSError:
        return set()
    return {test for f, _, test in (line.partition("\t") for line in lines) if f == function}


def pytest_collection_modifyitems(items: list) -> None:
    durations = _durations()
    mutant = _mutant()
    killers = _killers(_function(mutant)) if mutant else set()
    items.sort(
        key=lambda item: (item.nodeid not in killers, durations.get(item.nodeid, float("inf")))
    )


def pytest_collection_finish(session) -> None:
    if session.config.option.collectonly:  # the fork server's warm-up: the heap it forks
        gc.freeze()


def pytest_sessionstart(session) -> None:
    _started[:] = [time.monotonic(), 0]


def pytest_runtest_logfinish(nodeid, location) -> None:
    _started[1] += 1


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        _failed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    mutant = _mutant()
    if mutant:
        seconds = time.monotonic() - _started[0]
        with TIMES.open("a") as f:  # one short line per write: appends do not interleave
            f.write(f"{mutant}\t{seconds:.2f}\t{_started[1]}\t{int(exitstatus)}\n")
        if _failed:
            with KILLERS.open("a") as f:
                f.write(f"{_function(mutant)}\t{_failed[0]}\n")
