"""Where studies live: SQLite by default (a file in the working directory) or PostgreSQL.

The URL comes from ``--storage``, else ``SEARCH_STORAGE``, else the study file, else
``sqlite:///hpsearch.db``. Credentials never reach a log line or an error: ``mask_url``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

DEFAULT_SQLITE = "hpsearch.db"


def resolve_url(cli_url: str | None = None, study_url: str | None = None) -> str:
    url = cli_url or os.environ.get("SEARCH_STORAGE") or study_url
    if not url:
        url = f"sqlite:///{Path.cwd() / DEFAULT_SQLITE}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # make relative SQLite paths absolute, so the printed dashboard command works anywhere
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            url = f"sqlite:///{(Path.cwd() / rel).resolve()}"
    return url


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :].split("?", 1)[0])
    return None


def check_url(url: str) -> None:
    """Refuse, before anything is written, a storage we cannot use."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None:
            return
        parent = path.parent
        if not parent.is_dir():
            raise ValueError(
                f"cannot create the SQLite storage {path}: directory {parent} does not exist; "
                "create it or pass another --storage"
            )
        target = path if path.exists() else parent
        if not os.access(target, os.W_OK):
            raise ValueError(
                f"cannot write the SQLite storage {path}: {target} is not writable; "
                "fix its permissions or pass another --storage"
            )
        return
    if not url.startswith(("postgresql", "mysql")):
        raise ValueError(
            f"unsupported storage URL {mask_url(url)!r}; use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with a pool that survives server restarts (pre-ping)."""
    import optuna
    import sqlalchemy.exc

    check_url(url)
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
        )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise ValueError(
            f"cannot connect to the storage {_where(url)}: {_first_line(exc)}"
        ) from None
    except ImportError as exc:
        raise ValueError(
            f"the storage {mask_url(url)!r} needs a database driver ({exc.name}); "
            "install hpsearch[postgres]"
        ) from None


def artifact_dir(url: str, study_name: str) -> Path:
    """Checkpoints and artifacts of a study: beside the SQLite file, else ./hpsearch-artifacts
    (or SEARCH_ARTIFACTS). The study name is hashed into the path, so any name is safe."""
    base = os.environ.get("SEARCH_ARTIFACTS")
    if base:
        root = Path(base)
    else:
        path = sqlite_path(url)
        root = (
            path.with_name(path.name + ".artifacts") if path else Path.cwd() / "hpsearch-artifacts"
        )
    return root / study_slug(study_name)


def artifact_store_dir(url: str) -> Path:
    """One artifact store per storage (optuna-dashboard's --artifact-dir)."""
    return artifact_dir(url, "_").parent / "artifact-store"


def study_slug(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60].strip("._") or "study"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def dashboard_command(url: str) -> str:
    return (
        f"optuna-dashboard {mask_url(url)} --host 127.0.0.1 "
        f"--artifact-dir {artifact_store_dir(url)}"
    )


def _where(url: str) -> str:
    m = re.match(r"[\w+]+://(?:[^@/]*@)?([^/:?]+)(?::(\d+))?", url)
    if m:
        return f"{m.group(1)}:{m.group(2) or 5432}"
    return mask_url(url)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_url(text[0]) if text else type(exc).__name__
