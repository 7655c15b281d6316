"""Files written whole or not at all: ``atomic_write`` for checkpoints, epoch states, the
decoded-image cache, study files and prediction tables."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; when the block ends without an
    error it replaces ``path`` in one rename, so a reader (another worker, a resumed run) sees
    the old file or the new one, never half of one. On an error the temporary file is deleted
    and ``path`` is left as it was.

    The temporary name is hidden, unique per process and call (workers and threads may write
    the same file at once), and in the same folder (a rename across file systems is a copy).
    It is not created here: the writer creates it, with the usual permissions.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


__all__ = ["atomic_write"]
