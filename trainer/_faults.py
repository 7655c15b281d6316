"""Fault injection for tests: off unless a test (or the CLI, from ``HPSEARCH_FAULTS``)
installs it.

The training loop never reads the environment and has no fault branch per step: ``train``
asks ``installed()`` once per call, and only when faults are installed does it wrap the
optimisation step in ``wrap_step``. Tests in this process call ``install(parse("..."))``;
a test that starts ``python -m search.cli`` sets ``HPSEARCH_FAULTS`` and the CLI entry
installs it once, before any training (``search.cli.main``).
``HPSEARCH_FAULTS="epoch_sleep=1.5,oom_above=32"``:

- ``epoch_sleep=S``: sleep S seconds in the middle of every training epoch (after its first
  step), so a test can kill or pause a worker mid-epoch.
- ``oom_above=B``: a training micro-batch larger than B raises the out-of-memory error a GPU
  would (``torch.OutOfMemoryError``), so the OOM path runs on a CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENV = "HPSEARCH_FAULTS"


@dataclass(frozen=True)
class Faults:
    epoch_sleep: float = 0.0
    oom_above: int | None = None


_installed: Faults | None = None


def parse(spec: str) -> Faults | None:
    """``"epoch_sleep=1.5,oom_above=32"`` -> Faults; an empty spec is None (no faults)."""
    values: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = item.partition("=")
        try:
            values[key.strip()] = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"{ENV}: bad value in {item!r}; expected NAME=NUMBER") from None
    unknown = set(values) - {"epoch_sleep", "oom_above"}
    if unknown:
        raise ValueError(f"{ENV}: unknown fault(s) {sorted(unknown)}; use epoch_sleep, oom_above")
    if not values:
        return None
    oom = values.get("oom_above")
    return Faults(
        epoch_sleep=values.get("epoch_sleep", 0.0), oom_above=None if oom is None else int(oom)
    )


def from_env() -> Faults | None:
    """The faults ``HPSEARCH_FAULTS`` asks for (read by the CLI entry, never by the loop)."""
    return parse(os.environ.get(ENV, ""))


def install(faults: Faults | None) -> Faults | None:
    """Make ``faults`` apply to every later ``train`` call in this process; returns the
    previous setting so a caller can put it back."""
    global _installed
    previous, _installed = _installed, faults
    return previous


def installed() -> Faults | None:
    return _installed


def out_of_memory_error() -> type[BaseException]:
    import torch

    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def wrap_step(
    step: Callable[[list[Any]], Any], faults: Faults, *, steps_per_epoch: int
) -> Callable[[list[Any]], Any]:
    """``step`` (which takes the micro-batches of one optimizer step) with the faults added."""
    calls = 0
    sleep_at = min(1, steps_per_epoch - 1)  # the second step of each epoch (or the only one)

    def faulty_step(micro: list[Any]) -> Any:
        nonlocal calls
        if faults.oom_above is not None:
            for b in micro:
                if len(b.y) > faults.oom_above:
                    raise out_of_memory_error()(
                        f"CUDA out of memory (simulated by {ENV}: batch {len(b.y)} > "
                        f"{faults.oom_above})"
                    )
        if faults.epoch_sleep and calls % steps_per_epoch == sleep_at:
            time.sleep(faults.epoch_sleep)  # a test kills or pauses us here
        calls += 1
        return step(micro)

    return faulty_step
