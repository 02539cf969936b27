"""The two database engines the store runs on, behind one small connection interface.

The store (:mod:`agent_webhook.store`) and the incidents (:mod:`agent_webhook.incidents`) write
their SQL once, with ``?`` placeholders and a subset both engines speak (``INSERT ... ON CONFLICT
... DO NOTHING``, ``RETURNING``, savepoints). What differs is here, and nowhere else:

- placeholders: PostgreSQL's driver takes ``%s`` (``?`` is rewritten, a literal ``%`` escaped);
- the schema's types: an autoincrement key, ``REAL`` (:func:`pg_schema` rewrites the one schema);
- row locking for several processes on one database: :attr:`Database.skip_locked` (``FOR UPDATE
  SKIP LOCKED`` on PostgreSQL; SQLite has one writer at a time, ``BEGIN IMMEDIATE``, and one
  process per database, enforced by a lock file) and :meth:`Database.lock` (a transaction-scoped
  advisory lock on a key; a no-op on SQLite for the same reason);
- transactions and durability: SQLite's ``synchronous`` pragma and WAL checkpoints.

Rows of both engines are read by name (``row["id"]``) and by position (``row[0]``).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from agent_webhook.config import Synchronous
from gpu_watchdog_core.logs import redact, strip_userinfo

# What either engine raises for a failed statement or a lost connection.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
# pg_advisory_lock key of the schema migration: replicas starting together migrate one at a time.
_MIGRATION_LOCK = 0x6777_6D69_6772  # "gwmigr"
_CHECKPOINT_EVERY = 500  # SQLite commits between background WAL checkpoints


class Cursor:
    """What the store reads from a statement: rows (iterable), one row, affected rows."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


class Database:
    """One connection, used from the store's single thread."""

    dialect: str = ""
    # Other processes (replicas) work on this database: work must be taken, not just read.
    shared: bool = False
    # Appended to a SELECT of a row the transaction will update: other replicas wait for it.
    for_update: str = ""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.execute(sql, row)

    def executescript(self, script: str) -> None:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def skip_locked(self, table: str = "") -> str:
        """Appended to a SELECT whose rows (of `table`) the transaction will update: other
        replicas skip them rather than wait (SQLite: nothing, one writer takes them all)."""
        return ""

    def lock(self, key: str) -> None:
        """Hold `key` exclusively until the transaction ends (several processes on one database)."""

    def begin(self, durable: bool) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def checkpoint(self) -> None:
        """Background maintenance after many commits (SQLite's WAL checkpoint)."""

    def migration_lock(self, held: bool) -> None:
        """Held while the schema is migrated (SQLite: the database's lock file suffices)."""

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, synchronous: Synchronous) -> None:
        self.conn = conn
        self.synchronous = synchronous
        self._sync_now = synchronous
        self._commits = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return Cursor(self.conn.execute(sql, params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self.conn.executescript(script)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def begin(self, durable: bool) -> None:
        # Only ingest commits need the fsync (see agent_webhook.store): the rest commit NORMAL.
        wanted = self.synchronous if durable else "normal"
        if wanted != self._sync_now:
            self.conn.execute(f"PRAGMA synchronous={wanted.upper()}")
            self._sync_now = wanted
        self.conn.execute("BEGIN IMMEDIATE")
        self._durable = durable

    def commit(self) -> None:
        self.conn.execute("COMMIT")
        self._commits += 1
        if not self._durable and self._commits >= _CHECKPOINT_EVERY:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the WAL back into the database (background; ingest never pays for it)."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._commits = 0

    def close(self) -> None:
        self.conn.close()


class _PgRow(tuple[Any, ...]):
    """A row readable by column name and by position, like sqlite3.Row."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> _PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _pg_rows(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: _PgRow(values, names)


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as the driver's `%s` (the store's SQL has no `?` inside literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def pg_schema(script: str) -> str:
    """The SQLite schema in PostgreSQL's types: generated keys, 64-bit integers, doubles."""
    generated = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    script = re.sub(r"\b(\w+) INTEGER PRIMARY KEY AUTOINCREMENT\b", r"\1 " + generated, script)
    script = re.sub(r"\bid INTEGER PRIMARY KEY,", "id " + generated + ",", script)
    script = re.sub(r"\bINTEGER\b", "BIGINT", script)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)


class PostgresDatabase(Database):
    """A psycopg 3 connection in autocommit mode; the store's transactions are explicit BEGINs.

    A lost connection (a PostgreSQL restart, a failover) fails the statement that finds out, like
    any other error (StoreError upstream: a 503, a retry); the next statement outside a
    transaction, or the next BEGIN, opens a new one.
    """

    dialect = "postgresql"
    shared = True
    for_update = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = self._connect()
        self._in_tx = False

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, row_factory=_pg_rows, connect_timeout=10)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if not self._in_tx and (self.conn.broken or self.conn.closed):
            self.conn = self._connect()  # a read after a lost connection (inside a transaction: its error)
        # Without parameters the driver reads the SQL as is (a `%` is no placeholder then).
        return Cursor(self.conn.execute(_pg_sql(sql) if params else sql.encode(), params or None))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), rows)

    def executescript(self, script: str) -> None:
        self.conn.execute(pg_schema(script).encode())

    def columns(self, table: str) -> set[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema=current_schema() AND table_name=?",
            (table,),
        )
        return {str(row[0]) for row in rows}

    def skip_locked(self, table: str = "") -> str:
        return f" FOR UPDATE OF {table} SKIP LOCKED" if table else " FOR UPDATE SKIP LOCKED"

    def lock(self, key: str) -> None:
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def begin(self, durable: bool) -> None:
        self.execute("BEGIN")  # reconnects first if the connection was lost
        self._in_tx = True

    def commit(self) -> None:
        try:
            self.execute("COMMIT")
        finally:
            self._in_tx = False

    def rollback(self) -> None:
        try:
            if not (self.conn.broken or self.conn.closed):
                self.execute("ROLLBACK")
        finally:
            self._in_tx = False

    def migration_lock(self, held: bool) -> None:
        """Replicas starting together migrate the schema one after the other."""
        fn = "pg_advisory_lock" if held else "pg_advisory_unlock"
        self.execute(f"SELECT {fn}(?)", (_MIGRATION_LOCK,))

    def close(self) -> None:
        self.conn.close()


def describe(target: str) -> str:
    """How a database is named in logs and errors: a URL without its password."""
    return redact(strip_userinfo(target))
