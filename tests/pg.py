"""A real, throwaway PostgreSQL server for the tests (issue 16, item 5).

Debian's `postgresql` package (`.ci/run` installs it) brings `initdb` and `pg_ctl` in
/usr/lib/postgresql/VERSION/bin. The server lives in a temporary folder, listens on 127.0.0.1
(and a unix socket in that folder) on a free port, and is stopped with `pg_ctl stop -m
immediate` at the end. PostgreSQL refuses to run as root, so when the tests run as root (CI
does) the server runs as the `postgres` user the package creates (`runuser -u postgres --`),
and the folder belongs to it.

The superuser has a password (scram-sha-256 over TCP): the ledger URL carries one, as a real
one would, so the tests see that it is never printed or written.

Durability settings are off (fsync, full_page_writes): the tests kill flowrun, never the
server or the machine, and an fsync per commit on a shared disk is what makes a test slow.
`running(..., durable=True)` keeps the server's defaults (both on) instead: bench/paced_bench.py
measures what a durable ledger costs, beside a SQLite ledger that fsyncs every commit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

USER = "flowrun"
SERVER_USER = "postgres"  # the Debian package's; used when the tests run as root


@dataclass
class Postgres:
    """A running server: `url(database)` is a ledger location with its password."""

    port: int
    password: str
    folder: Path
    started_in: float  # seconds from initdb to accepting connections
    _databases: int = field(default=0)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def fresh(self) -> str:
        """A fresh, empty ledger: a schema of its own in the server's `postgres` database,
        named in the URL as a user would (libpq's `options`). A schema costs 0.2 ms where a
        database costs 220 ms (measured here), and a test of the store needs a dozen."""
        name = self._next("ledger")
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def postmaster(self) -> int:
        """The server's main process id (the first line of postmaster.pid): its backends
        are its children, so its /proc entry leads to all of the server's CPU."""
        return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def fresh_database(self) -> str:
        """A new, empty database (its `public` schema holds the ledger), as a CI job's
        service container would offer."""
        name = self._next("db")
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def _next(self, prefix: str) -> str:
        self._databases += 1
        return f"{prefix}{self._databases}"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


@contextlib.contextmanager
def running(bin_dir: Path, *, durable: bool = False) -> Iterator[Postgres]:
    """initdb, start, yield, stop -m immediate, remove the folder. `durable`: fsync and
    full_page_writes keep the server's defaults (on), rather than off (module docstring)."""
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="flowrun-pg-"))
    password = secrets.token_hex(12)
    data = folder / "data"
    try:
        (folder / "pw").write_text(password, "utf-8")
        if os.geteuid() == 0:
            server = pwd.getpwnam(SERVER_USER)
            os.chown(folder, server.pw_uid, server.pw_gid)
            os.chown(folder / "pw", server.pw_uid, server.pw_gid)
        _run(
            bin_dir / "initdb",
            "-D", str(data), "-U", USER, f"--pwfile={folder / 'pw'}", "--auth=scram-sha-256",
            "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        (folder / "pw").unlink()
        port = _free_port()
        settings = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
            " -c shared_buffers=32MB -c max_connections=60"
        )
        if not durable:
            settings += " -c fsync=off -c full_page_writes=off"
        _run(
            bin_dir / "pg_ctl", "start", "-D", str(data), "-w", "-t", "60",
            "-l", str(folder / "log"), "-o", settings,
        )  # fmt: skip
        pg = Postgres(port, password, folder, time.monotonic() - started)
        try:
            yield pg
        finally:
            _run(bin_dir / "pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(*command: str | Path) -> None:
    done = subprocess.run(
        _as_server_user([str(c) for c in command]),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-2000:]}")
