"""hpsearch's cache folder: decoded images, throughput probes, error logs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HPSEARCH_CACHE_DIR``; else ``$XDG_CACHE_HOME/hpsearch`` (the XDG base directory
    spec: a relative ``XDG_CACHE_HOME`` is invalid and ignored); else ``~/.cache/hpsearch``.
    Not created here."""
    own = os.environ.get("HPSEARCH_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "hpsearch"
    return Path.home() / ".cache" / "hpsearch"


__all__ = ["cache_root"]
