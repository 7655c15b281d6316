"""A worker process: ``search <argv>`` in a new Python, its output one text line at a time.
Both launchers start their workers here (``launcher`` on this machine, ``ray_launcher`` in a
Ray task)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def spawn_worker(argv: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """``search <argv>`` with ``env``; stdout and stderr merged, line-buffered text, no stdin.
    ``popen`` adds what a launcher needs (a new session, a death signal)."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        **popen,
    )
