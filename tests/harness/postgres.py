"""A real PostgreSQL 15 (Debian's `postgresql-15`) on a loopback port and a private socket, for tests.

server = start_postgres(session_procs)
url = server.create_database()   # postgresql://gw:<password>@127.0.0.1:<port>/<fresh db>

The cluster lives in a temp directory of its own (initdb), listens on 127.0.0.1 only, with its
Unix socket in that directory, and is stopped by pid with the process manager. Connections over
TCP need a password (scram-sha-256), so the URLs the tests hand to the agent carry one, as a
deployment's would: tests can check that it never reaches a log.

PostgreSQL refuses to run as root (CI runs as root): there the directory is given to the
`postgres` system user and the server runs as that user (`setpriv`, which execs, so the pid the
process manager stops is the server's).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port
from tests.harness.promstack import MissingBinary

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "gw"


@dataclass
class PostgresServer:
    port: int
    password: str
    root: Path
    process: ManagedProcess

    def url(self, database: str = "postgres", *, user: str = USER, password: str | None = None) -> str:
        return f"postgresql://{user}:{password or self.password}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL (with the password)."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--", *argv]


def start_postgres(procs: ProcessManager, *, timeout: float = 60.0, durable: bool = False) -> PostgresServer:
    """`durable`: fsync on, as a deployment runs it (benchmarks); tests run without."""
    initdb, postgres = PG_BIN / "initdb", PG_BIN / "postgres"
    if not initdb.exists() or not postgres.exists():
        raise MissingBinary(f"PostgreSQL 15 not found at {PG_BIN}: install Debian's postgresql-15")
    # Not under pytest's tmp_path: root's is mode 0700, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    data = root / "data"
    password = secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(root, 0o700)
    subprocess.run(
        _as_postgres(
            [
                str(initdb),
                "-D",
                str(data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = procs.start(
        "postgres",
        _as_postgres(
            [
                str(postgres),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"fsync={'on' if durable else 'off'}",
                "-c",
                "max_connections=200",
            ]
        ),
    )
    server = PostgresServer(port=port, password=password, root=root, process=proc)

    def ready() -> bool:
        with psycopg.connect(server.url(), connect_timeout=2):
            return True

    proc.wait_ready(ready, timeout, what=f"PostgreSQL on {LOOPBACK}:{port}")
    return server


def remove(server: PostgresServer) -> None:
    """The cluster's directory, once the server is stopped."""
    shutil.rmtree(server.root, ignore_errors=True)
