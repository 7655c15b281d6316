"""Fault injection for tests, off unless ``HPSEARCH_FAULTS`` is set (only tests set it).

``HPSEARCH_FAULTS="epoch_sleep=1.5,oom_above=32"``:

- ``epoch_sleep=S``: sleep S seconds in the middle of every training epoch (after its first
  step), so a test can kill or pause a worker mid-epoch.
- ``oom_above=B``: a training or evaluation batch larger than B raises the out-of-memory error
  a GPU would (``torch.OutOfMemoryError``), so the OOM path runs on a CPU.
"""

from __future__ import annotations

import os

ENV = "HPSEARCH_FAULTS"


def faults() -> dict[str, float]:
    raw = os.environ.get(ENV, "").strip()
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"{ENV}: bad value in {item!r}; expected NAME=NUMBER") from None
    return out


def out_of_memory_error() -> type[BaseException]:
    import torch

    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def check_batch(fault: dict[str, float], batch: int) -> None:
    limit = fault.get("oom_above")
    if limit is not None and batch > limit:
        raise out_of_memory_error()(
            f"CUDA out of memory (simulated by {ENV}: batch {batch} > {int(limit)})"
        )
