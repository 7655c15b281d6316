"""hpsearch's cache folder: decoded images, throughput probes, error logs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HPSEARCH_CACHE_DIR``, else ``~/.cache/hpsearch`` (not created here)."""
    root = os.environ.get("HPSEARCH_CACHE_DIR") or Path.home() / ".cache" / "hpsearch"
    return Path(root).expanduser()


__all__ = ["cache_root"]
