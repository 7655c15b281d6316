"""Where studies live: SQLite by default (a file in the working directory) or PostgreSQL.

The URL comes from ``--storage``, else ``SEARCH_STORAGE``, else the study file, else
``sqlite:///hpsearch.db``. Credentials may sit in the URL, in a ``.pgpass`` file or in the
environment (``PGPASSWORD``; libpq reads both when the URL has no password), and never reach a
log line or an error: ``mask_url`` / ``redact``.

PostgreSQL connections come from a pool that pings before use and a storage
(``ResilientRDBStorage``, an importable ``RDBStorage`` subclass that pickles) that retries a
call for ``SEARCH_DB_RETRY_SECONDS`` (120) when the connection drops (a server restart), so
workers reconnect and go on.

``Storage`` is the storage resolved once from its URL (parsed by SQLAlchemy's ``make_url``):
every module gets that object, never the URL text. ``Storage.exclusive(key)`` is a lock shared
by every process and machine on the storage (a PostgreSQL advisory lock; a file lock beside a
SQLite database): it serialises schema and study creation and the claiming of trial slots.
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
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from search.store import _optuna_internals as _internals
from search.store import artifacts as _artifacts

DEFAULT_SQLITE = "hpsearch.db"
ARTIFACTS_DIR = "hpsearch-artifacts"  # without a SQLite file to put them beside
MAX_NAME_LENGTH = 512  # Optuna's indexed string columns (study names, attribute keys)
CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up
log = logging.getLogger("hpsearch")


def resolve_url(cli_url: str | None = None, study_url: str | None = None) -> str:
    """The storage URL to use: ``cli_url``, else ``$SEARCH_STORAGE``, else ``study_url``, else
    ``hpsearch.db`` in the working directory; a relative SQLite path made absolute (so the
    printed dashboard command works anywhere) and ``postgresql://`` given our driver."""
    url = cli_url or os.environ.get("SEARCH_STORAGE") or study_url
    if not url:
        return f"sqlite:///{Path.cwd() / DEFAULT_SQLITE}"
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not Path(db).is_absolute():
            absolute = str((Path.cwd() / db).resolve())
            url = parsed.set(database=absolute).render_as_string(hide_password=False)
    elif parsed.drivername in ("postgresql", "postgres"):
        # the driver we ship (psycopg 3), not SQLAlchemy's default; the rest as it was written
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _parse(url: str) -> URL:
    """``url`` parsed by SQLAlchemy; a ValueError naming the URLs we take when it is none."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(_unsupported(url)) from None


def _unsupported(url: str) -> str:
    return (
        f"unsupported storage URL {mask_url(url)!r}; use sqlite:///FILE or "
        "postgresql+psycopg://USER@HOST:PORT/DB"
    )


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


def is_sqlite(url: str) -> bool:
    """Whether the URL ``url`` names a SQLite database, for launchers that hold only the URL
    (a worker's environment); everything else asks ``Storage.is_sqlite``."""
    try:
        return _parse(url).get_backend_name() == "sqlite"
    except ValueError:
        return False


def check_workers(storage: Storage | str, workers: int) -> None:
    """Several workers need a server database: refuse SQLite with the reason and the fix."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, but got {workers}")
    if workers > 1 and Storage.open(storage).is_sqlite:
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


def _engine_kwargs(backend: str) -> dict[str, Any]:
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 300}
    if backend == "postgresql":
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
            if _parse(url).get_backend_name() != "sqlite":
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


_BACKENDS = ("sqlite", "postgresql")


class Storage:
    """One study storage, resolved once from its URL and handed to every module that reads or
    writes a study: the parsed URL and its backend, the masked URL for messages, the retrying
    Optuna storage (``rdb``, opened on first use, once) and its engine, the lock every process
    and machine respects (``exclusive``), and where checkpoints and artifacts go.

    ``url`` is the text form, only for what leaves the process (a worker's environment).
    """

    def __init__(self, url: str) -> None:
        self.url = resolve_url(url)
        self.parsed: URL = _parse(self.url)
        self.backend = self.parsed.get_backend_name()
        if self.backend == "mysql":  # Optuna takes it; nothing here is tested against it
            raise ValueError(
                f"MySQL storage ({mask_url(self.url)}) is not supported: hpsearch's locks and "
                "claims are tested on SQLite and PostgreSQL only; use "
                "postgresql+psycopg://USER@HOST:PORT/DB (many workers) or sqlite:///FILE"
            )
        if self.backend not in _BACKENDS:
            raise ValueError(_unsupported(self.url))
        self.masked = mask_url(self.url)
        self._rdb: ResilientRDBStorage | None = None
        self._lock_engine: Any = None
        self._opening = threading.Lock()  # threads asking at once still open it once
        self._pid = os.getpid()

    @classmethod
    def open(cls, storage: Storage | str | None = None, *, study_url: str | None = None) -> Storage:
        """A ``Storage`` as given, else the one ``resolve_url`` picks for the URL ``storage``
        (``--storage``), ``$SEARCH_STORAGE`` and the study file's ``study_url``."""
        if isinstance(storage, Storage):
            return storage
        return cls(resolve_url(storage, study_url))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return Storage, (self.url,)  # the engines are rebuilt on first use

    def __repr__(self) -> str:
        return f"Storage({self.masked!r})"

    # -- what the URL says -----------------------------------------------------------------
    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file; None for a server or an in-memory database."""
        db = self.parsed.database
        return Path(db) if self.is_sqlite and db and db != ":memory:" else None

    @property
    def exists(self) -> bool:
        """False only for a SQLite file not created yet (a server database always counts)."""
        path = self.sqlite_path
        return path is None or path.exists()

    @property
    def where(self) -> str:
        """``host:port/db`` of a server (the password never), or the masked URL."""
        return _where(self.url)

    def check(self) -> None:
        """Refuse, before anything is written, a SQLite file we cannot create or write."""
        path = self.sqlite_path
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

    # -- the database ----------------------------------------------------------------------
    @property
    def rdb(self) -> ResilientRDBStorage:
        """The Optuna storage, with a pool that survives server restarts (pre-ping, retries).
        An unreachable database is a ValueError naming host and port, never the password."""
        self._after_fork()
        with self._opening:
            if self._rdb is None:
                self._rdb = self._open_rdb()
        return self._rdb

    def _after_fork(self) -> None:
        """In a forked child (workers started with fork), let go of the parent's connections
        without closing them (they are the parent's) and open this process's own."""
        if self._pid == os.getpid():
            return
        for engine in (self._rdb.engine if self._rdb else None, self._lock_engine):
            if engine is not None:
                engine.dispose(close=False)
        self._rdb = self._lock_engine = None
        self._opening = threading.Lock()  # another thread may have held it at the fork
        self._pid = os.getpid()

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of ``rdb``."""
        return self.rdb.engine

    def _open_rdb(self) -> ResilientRDBStorage:
        import sqlalchemy.exc

        self.check()
        try:
            return ResilientRDBStorage(self.url, engine_kwargs=_engine_kwargs(self.backend))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            raise _connect_error(self.url, exc) from None
        except ImportError as exc:
            raise ValueError(
                f"the storage {self.masked!r} needs a database driver ({exc.name}); "
                "install hpsearch[postgres]"
            ) from None

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a dropped connection or a busy database: worth retrying."""
        return _transient(exc, self.url)

    def error_line(self, exc: BaseException) -> str:
        """``exc`` in one line, in the database's words, credentials masked."""
        return error_line(exc, self.url)

    # -- the lock --------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(
        self, key: str, *, hold_limit: float = 120.0, pooled: bool = False
    ) -> Iterator[Any]:
        """Hold a lock named ``key`` that every process and machine on this storage respects.

        PostgreSQL: a transaction-level advisory lock on a connection of its own (``pooled``:
        from ``engine``'s pool, else a fresh one; yielded, so the caller may query there). The
        server drops it when the holder dies, and ends a holder's transaction that sits idle
        for ``hold_limit`` seconds (a paused process), so no worker waits forever. SQLite: a
        file lock on ``<db>.lock`` (one for every key). Yields the connection or None.
        """
        if self.is_sqlite:
            with self._file_lock(key):
                yield None
        else:
            with self._server_lock(key, hold_limit=hold_limit, pooled=pooled) as conn:
                yield conn

    @contextlib.contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        path = self.sqlite_path
        if path is None:  # in-memory SQLite: one process
            with _local_locks.setdefault(key, threading.Lock()):
                yield
            return
        from filelock import FileLock

        lock = FileLock(path.with_name(path.name + ".lock"))
        try:
            if not path.parent.is_dir():  # filelock would create it
                raise FileNotFoundError(path.parent)
            lock.acquire()
        except OSError:  # a missing or read-only directory: nothing will be written there
            yield
            return
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _server_lock(self, key: str, *, hold_limit: float, pooled: bool) -> Iterator[Any]:
        import sqlalchemy

        engine = self.engine if pooled else self._own_lock_engine()
        try:
            conn = engine.connect()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            if not pooled:
                raise _connect_error(self.url, exc) from None
            raise
        with conn, conn.begin():  # PostgreSQL (the one server backend)
            ms = int(hold_limit * 1000)
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(key)})
            yield conn

    def _own_lock_engine(self) -> Any:
        """An engine without a pool for locks held apart from ``rdb``'s pool: before the
        schema exists (creating ``rdb`` creates it), and for locks held for minutes."""
        import sqlalchemy

        self._after_fork()
        with self._opening:
            if self._lock_engine is None:
                connect_args = _engine_kwargs(self.backend).get("connect_args", {})
                self._lock_engine = sqlalchemy.create_engine(
                    self.url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
                )
        return self._lock_engine

    # -- artifacts -------------------------------------------------------------------------
    @property
    def remote_artifacts(self) -> str | None:
        """``$SEARCH_ARTIFACTS`` when it is an S3 URL (``search.store.artifacts``), else None."""
        base = os.environ.get("SEARCH_ARTIFACTS")
        return base if _artifacts.is_remote(base) else None

    @property
    def artifact_root(self) -> Path:
        """``$SEARCH_ARTIFACTS``, else beside the SQLite file, else ./hpsearch-artifacts. With
        an S3 URL there: this node's staging folder for it, which mirrors the bucket."""
        base = os.environ.get("SEARCH_ARTIFACTS")
        if _artifacts.is_remote(base):
            return _artifacts.S3Url.parse(base).local
        if base:
            return Path(base)
        path = self.sqlite_path
        return path.with_name(path.name + ".artifacts") if path else Path.cwd() / ARTIFACTS_DIR

    def artifact_dir(self, study_name: str) -> Path:
        """Checkpoints and artifacts of a study. The study name is hashed into the path, so
        any name is safe."""
        return self.artifact_root / study_slug(study_name)

    def checkpoint_dir(self, study_name: str) -> Path:
        """The study's trial checkpoints (``trial-N.safetensors``, ``trial-N.last...``)."""
        return self.artifact_dir(study_name) / "checkpoints"

    @property
    def artifact_store_dir(self) -> Path:
        """One artifact store per storage (optuna-dashboard's --artifact-dir)."""
        return self.artifact_root / "artifact-store"

    def artifact_store(self) -> Any:
        """The artifact store the dashboard notes upload to (its folder made on first use), or
        its prefix in the bucket of ``remote_artifacts``."""
        if self.remote_artifacts:
            return _artifacts.PrefixedArtifactStore(self.remote_artifacts)
        root = self.artifact_store_dir
        root.mkdir(parents=True, exist_ok=True)
        return optuna.artifacts.FileSystemArtifactStore(str(root))

    def dashboard_command(self) -> str:
        if self.remote_artifacts:  # optuna-dashboard's own command reads a folder only
            return (
                f"SEARCH_ARTIFACTS={self.remote_artifacts} search dashboard --storage {self.masked}"
            )
        return (
            f"optuna-dashboard {self.masked} --host 127.0.0.1 "
            f"--artifact-dir {self.artifact_store_dir}"
        )


def open_storage(url: str | None = None) -> ResilientRDBStorage:
    """The retrying Optuna storage of ``url`` (``Storage.open(url).rdb``), for scripts and
    tests that want an Optuna storage and nothing else."""
    return Storage.open(url).rdb


def _lock_key(key: str) -> int:
    """A signed 64-bit advisory-lock id for a text key."""
    return int.from_bytes(
        hashlib.sha256(f"hpsearch:{key}".encode()).digest()[:8], "big", signed=True
    )


_local_locks: dict[str, threading.Lock] = {}


def study_slug(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60].strip("._") or "study"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _where(url: str) -> str:
    """``host:port/db`` of a server URL (the password never), or the masked URL."""
    try:
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
