"""pytest plugin for ``scripts/mutation.sh`` only: a mutant's tests run fastest first.

mutmut's fork-server runner (the one that keeps torch safe to fork) hands pytest a mutant's
tests in set order, so a mutant that one quick test kills often first pays for the slow
ones. This plugin orders the collected tests by the durations mutmut measured in its
traced run, fastest first, as its plain fork runner does. It reads them from mutmut's own
``mutmut-stats.json`` in the working folder (mutmut has no public API for them; this module
is the one place that reads the file). Before the traced run there is no file and no order.

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
_started = [0.0, 0]  # monotonic start, tests run


_DURATIONS: dict[str, float] = {}  # read once, in the fork server's warm-up: mutants inherit


def _durations() -> dict[str, float]:
    if not _DURATIONS:  # none before the traced run has written the file
        try:
            _DURATIONS.update(json.loads(STATS.read_text())["duration_by_test"])
        except (OSError, ValueError, KeyError):
            pass
    return _DURATIONS


def pytest_collection_modifyitems(items: list) -> None:
    durations = _durations()
    if durations:
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


def pytest_collection_finish(session) -> None:
    if session.config.option.collectonly:  # the fork server's warm-up: the heap it forks
        gc.freeze()


def pytest_sessionstart(session) -> None:
    _started[:] = [time.monotonic(), 0]


def pytest_runtest_logfinish(nodeid, location) -> None:
    _started[1] += 1


def pytest_sessionfinish(session, exitstatus) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" in mutant:  # a mutant's run, not the traced or the forced-fail run
        seconds = time.monotonic() - _started[0]
        with TIMES.open("a") as f:  # one short line per write: appends do not interleave
            f.write(f"{mutant}\t{seconds:.2f}\t{_started[1]}\t{int(exitstatus)}\n")
