"""A throwaway PostgreSQL server for tests: Debian's initdb/pg_ctl, a temp directory, a free
port on 127.0.0.1, password authentication. Started once per test session, one fresh database
per test. Skips (with the reason) only when the binaries are absent.

    from pgserver import pg_fixture, pg_url_fixture  # noqa: F401  (fixtures pg, pg_url)

``pg`` is the session's ``PgServer``; ``pg_url`` a fresh database's URL for the test, as
``postgresql+psycopg://hp:PASSWORD@127.0.0.1:PORT/DB`` with a password full of URL specials.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

USER = "hp"
PASSWORD = "s3cr:t@p/w%rd"  # quoted in URLs; must never appear in any output
ENCODED = quote(PASSWORD, safe="")


def pg_bin_dir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable  # tests trade crash safety for speed; benchmarks must not
        self.root = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.sock.mkdir()
        if self.as_postgres:
            shutil.chown(self.sock, "postgres", "postgres")

    def _cmd(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        cmd = [str(a) for a in args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr or proc.stdout}")
        return proc.stdout

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text("postgres-pw\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._cmd(
            self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.pg_ctl("start")
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def pg_ctl(self, action: str, *extra: str) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._cmd(
            self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w",
            "-t", "30", action, *extra,
        )  # fmt: skip

    def restart(self) -> None:
        """Fast restart: every client connection is cut, as in a real server restart."""
        self.pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._cmd(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._cmd(
            self.bindir / "psql", "-h", self.sock, "-p", str(self.port), "-U", "postgres",
            "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def url(self, db: str, *, password: bool = True, driver: str = "postgresql+psycopg") -> str:
        auth = f"{USER}:{ENCODED}" if password else USER
        return f"{driver}://{auth}@127.0.0.1:{self.port}/{db}"


_server: PgServer | None = None


@pytest.fixture(scope="session", name="pg")
def pg_fixture():
    global _server
    bindir = pg_bin_dir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql "
            "package (bash scripts/setup.sh test does it as root)"
        )
    server = PgServer(bindir)
    try:
        server.start()
    except Exception:
        log = server.log.read_text() if server.log.exists() else ""
        server.stop()
        raise RuntimeError(f"could not start the test PostgreSQL; server log:\n{log}") from None
    _server = server
    yield server
    _server = None
    server.stop()


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg) -> str:
    return pg.url(pg.new_database())


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
