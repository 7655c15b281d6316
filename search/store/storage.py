"""Where studies live: SQLite by default (a file in the working directory) or PostgreSQL.

The URL comes from ``--storage``, else ``SEARCH_STORAGE``, else the study file, else
``sqlite:///hpsearch.db``. Credentials may sit in the URL, in a ``.pgpass`` file or in the
environment (``PGPASSWORD``; libpq reads both when the URL has no password), and never reach a
log line or an error: ``mask_url`` / ``redact``.

PostgreSQL connections come from a pool that pings before use and a storage
(``ResilientRDBStorage``, an importable ``RDBStorage`` subclass that pickles) that retries a
call for ``SEARCH_DB_RETRY_SECONDS`` (120) when the connection drops (a server restart), so
workers reconnect and go on. ``exclusive(url, key)`` is a lock shared by every process and
machine on the storage (a PostgreSQL advisory lock; a lock file beside a SQLite database): it
serialises schema and study creation and the claiming of trial slots.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna

from search.store import _optuna_internals as _internals

DEFAULT_SQLITE = "hpsearch.db"
MAX_NAME_LENGTH = 512  # Optuna's indexed string columns (study names, attribute keys)
CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up
log = logging.getLogger("hpsearch")


def resolve_url(cli_url: str | None = None, study_url: str | None = None) -> str:
    url = cli_url or os.environ.get("SEARCH_STORAGE") or study_url
    if not url:
        url = f"sqlite:///{Path.cwd() / DEFAULT_SQLITE}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # make relative SQLite paths absolute, so the printed dashboard command works anywhere
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            url = f"sqlite:///{(Path.cwd() / rel).resolve()}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):  # the driver we ship (psycopg 3), not SQLAlchemy's default
            url = "postgresql+psycopg://" + url[len(plain) :]
    return url


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<userinfo>[^/\s?#]*)@")
_KEYWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\"[^\"]*\"|[^&\s,;)]*)")


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; also masks
    ``password=...`` (query strings, libpq keyword strings) anywhere in a text."""

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user}{':***' if sep else ''}@"

    return _KEYWORD.sub(r"\1***", _USERINFO.sub(userinfo, url))


def password_of(url: str | None) -> str | None:
    """The password in a storage URL, if it carries one."""
    m = _USERINFO.search(url or "")
    if not m or ":" not in m.group("userinfo"):
        return None
    return m.group("userinfo").split(":", 1)[1] or None


def redact(text: str, url: str | None = None) -> str:
    """``mask_url``, and the URL's password removed wherever it appears (raw or decoded)."""
    text = mask_url(text)
    secret = password_of(url or os.environ.get("SEARCH_STORAGE"))
    for s in {secret, unquote(secret) if secret else None, os.environ.get("PGPASSWORD")}:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return text


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


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def check_workers(url: str, workers: int) -> None:
    """Several workers need a server database: refuse SQLite with the reason and the fix."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, but got {workers}")
    if workers > 1 and is_sqlite(url):
        raise ValueError(
            f"--workers {workers} needs PostgreSQL: SQLite lets one process write at a time, so "
            "parallel workers would stall on 'database is locked'; pass "
            "--storage postgresql+psycopg://USER@HOST:5432/DB (see docs/distributed.md) "
            "or run one worker"
        )


def check_study_name(name: str) -> None:
    """Any printable name is stored verbatim; what the databases cannot hold is refused."""
    if not name or not name.strip():
        raise ValueError('the study name is empty; set name = "..." in the study file')
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"the study name is {len(name)} characters long; Optuna storages hold at most "
            f'{MAX_NAME_LENGTH}: set a shorter name = "..." in the study file'
        )
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise ValueError(
            f"the study name {name[:60]!r} contains control characters ({bad[0]!r}); "
            "use printable characters"
        )


def _engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 300}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "hpsearch",
            # heartbeats are stored and compared in the session's time zone: UTC everywhere,
            # whatever a machine's TZ or PGTZ
            "options": "-c timezone=UTC",
            # a dead peer (machine gone, network cut) is noticed in about a minute
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    return kwargs


def _connect_error(url: str, exc: BaseException) -> ValueError:
    return ValueError(f"cannot connect to the storage {_where(url)}: {_first_line(exc, url)}")


# connection exceptions, server shutting down or starting, our idle lock holder cut off,
# serialization failure and deadlock: the same call can succeed a moment later
_TRANSIENT_SQLSTATES = {
    "08000",
    "08003",
    "08006",
    "57P01",
    "57P02",
    "57P03",
    "25P03",
    "40001",
    "40P01",
}


def _transient(exc: BaseException, url: str) -> bool:
    """A dropped or refused connection (server restart, failover) or a busy SQLite file:
    worth retrying. Bad data or a missing table is not."""
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if getattr(getattr(e, "orig", None), "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        if isinstance(e, sa_exc.DisconnectionError | sa_exc.TimeoutError):
            return True
        if isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError):
            if not is_sqlite(url):
                return True
            text = str(e.orig).lower()
            return "locked" in text or "busy" in text
        e = e.__cause__ or e.__context__
    return False


def _retry_seconds() -> float:
    try:
        return float(os.environ.get("SEARCH_DB_RETRY_SECONDS", "120"))
    except ValueError:
        return 120.0


def _retrying(method):
    """``method`` retried while the error is a dropped or refused connection (``_transient``)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline = None
        delay = 0.2
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
                    raise
                if not _transient(exc, self.url):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + _retry_seconds()
                    log.warning(
                        "lost the connection to the storage %s (%s); retrying for up to %.0f s",
                        _where(self.url),
                        _first_line(exc, self.url),
                        _retry_seconds(),
                    )
                if now >= deadline:
                    raise RuntimeError(
                        f"the storage {_where(self.url)} stayed unreachable for "
                        f"{_retry_seconds():.0f} s: {_first_line(exc, self.url)}"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 5.0)

    return wrapper


# The RDBStorage methods a running study calls, each one short transaction, safe to repeat:
# Optuna's public ones, and the private ones its study-level cache calls directly (listed with
# the reason in search/_optuna_internals.py). A name Optuna no longer defines fails at import,
# not silently unretried.
RETRIED_METHODS = (
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    *_internals.CACHED_STORAGE_CALLS,
)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """An ``RDBStorage`` whose calls (``RETRIED_METHODS``) are retried for
    ``SEARCH_DB_RETRY_SECONDS`` while the connection is down. It pickles like Optuna's own
    storage (the engine is rebuilt on unpickling), so a study can be shipped to another process."""


def _wrap_methods(cls: type, names: tuple[str, ...]) -> None:
    """Replace each method ``names`` of ``cls``'s base by its retrying version; a name the
    base lacks (Optuna renamed or removed it) is an ImportError, never skipped."""
    base = cls.__mro__[1]
    missing = [n for n in names if not callable(getattr(base, n, None))]
    if missing:
        raise ImportError(
            f"optuna {optuna.__version__} has no RDBStorage.{', '.join(missing)}; hpsearch "
            f"supports optuna {_internals.SUPPORTED}: install a version in that range"
        )
    for name in names:
        setattr(cls, name, _retrying(getattr(base, name)))


_wrap_methods(ResilientRDBStorage, RETRIED_METHODS)


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> ResilientRDBStorage:
    """An Optuna RDB storage with a pool that survives server restarts (pre-ping, retries).
    An unreachable database is a ValueError naming host and port, never the password."""
    import sqlalchemy.exc

    check_url(url)
    try:
        return ResilientRDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
        )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise _connect_error(url, exc) from None
    except ImportError as exc:
        raise ValueError(
            f"the storage {mask_url(url)!r} needs a database driver ({exc.name}); "
            "install hpsearch[postgres]"
        ) from None


def _lock_key(key: str) -> int:
    """A signed 64-bit advisory-lock id for a text key."""
    return int.from_bytes(
        hashlib.sha256(f"hpsearch:{key}".encode()).digest()[:8], "big", signed=True
    )


_local_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def exclusive(
    url: str, key: str, *, engine: Any = None, hold_limit: float = 120.0
) -> Iterator[Any]:
    """Hold a lock named ``key`` that every process and machine on this storage respects.

    PostgreSQL: a transaction-level advisory lock on its own connection (yielded, so the
    caller may query there). The server drops it when the holder dies, and ends a holder's
    transaction that sits idle for ``hold_limit`` seconds (a paused process), so no worker
    waits forever. SQLite: ``flock`` on ``<db>.lock``. Yields the connection or None.
    """
    import sqlalchemy

    if url.startswith("postgresql") or url.startswith("mysql"):
        own = engine is None
        if own:
            engine = sqlalchemy.create_engine(
                url,
                poolclass=sqlalchemy.pool.NullPool,
                **{k: v for k, v in _engine_kwargs(url).items() if k == "connect_args"},
            )
        try:
            try:
                conn = engine.connect()
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
                if own:
                    raise _connect_error(url, exc) from None
                raise
            with conn:
                with conn.begin():
                    if url.startswith("postgresql"):
                        ms = int(hold_limit * 1000)
                        conn.exec_driver_sql(
                            f"SET LOCAL idle_in_transaction_session_timeout = {ms}"
                        )
                        conn.execute(
                            sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"),
                            {"k": _lock_key(key)},
                        )
                        yield conn
                    else:  # MySQL: a named lock, released explicitly
                        name = f"hpsearch:{_lock_key(key)}"
                        conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
                        try:
                            yield conn
                        finally:
                            conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        finally:
            if own:
                engine.dispose()
        return
    path = sqlite_path(url)
    if path is None:  # in-memory SQLite: one process
        lock = _local_locks.setdefault(key, threading.Lock())
        with lock:
            yield None
        return
    import fcntl

    lock_file = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only directory: nothing will be written there either
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield None
    finally:
        os.close(fd)  # closing releases the flock


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
    """``host:port/db`` of a server URL (the password never), or the masked URL."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
    except Exception:
        return mask_url(url)
    if u.get_backend_name() == "sqlite":
        return mask_url(url)
    default_port = {"postgresql": 5432, "mysql": 3306}.get(u.get_backend_name(), "")
    host = u.host or u.query.get("host") or os.environ.get("PGHOST") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = u.port or os.environ.get("PGPORT") or default_port
    return f"{host}:{port}/{u.database or ''}"


def _first_line(exc: BaseException, url: str | None = None) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact(text[0], url) if text else type(exc).__name__


def error_line(exc: BaseException, url: str | None = None) -> str:
    """A storage error in one line, in the database's words where Optuna or SQLAlchemy wrapped
    them (Optuna's "An exception is raised during the commit ... exceeding max length" is
    what it says for any failed commit, a dropped connection included); credentials masked."""
    return _first_line(exc.__cause__ or exc, url)
