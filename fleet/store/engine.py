"""Persistence plumbing: one schema, two engines (SQLite embedded, PostgreSQL at scale).

Every query is written once with `?` placeholders in SQL both engines accept; the only
engine-specific code is connecting, the placeholder style and the migration lock. Connections are
per thread (the ingest writer has its own; API worker threads share nothing), which is what both
sqlite3 and psycopg expect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from fleet.errors import StoreError

log = logging.getLogger(__name__)

Row = dict[str, Any]


class Cursor(Protocol):
    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: Any, params: Iterable[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class Engine:
    """Connections, transactions and migrations of one database; the jobs (ingest writes, dashboard
    queries, users and sessions) are subclasses that add queries on top. `tz` is the site's time zone,
    whose calendar days the `day` column of new events holds."""

    dialect = "abstract"

    def __init__(self, tz: dt.tzinfo = dt.UTC) -> None:
        self.tz = tz
        self._local = threading.local()
        self._all_conns: list[Any] = []
        self._conns_lock = threading.Lock()

    # -- engine hooks -------------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _lock_migrations(self, cur: Cursor) -> None:
        """Serialise concurrent migrators (several fleet servers starting at once)."""

    def _begin(self, cur: Cursor) -> None:
        cur.execute("BEGIN")

    # -- plumbing -----------------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._all_conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._all_conns.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        cur: Cursor = self._conn().cursor()
        self._begin(cur)
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _x(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self._sql(sql), params)
        return cur

    def _xmany(self, cur: Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(self._sql(sql), rows)

    def _insert_rows(self, cur: Cursor, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]],
                     types: str) -> None:
        """`head VALUES row tail` for every row: one statement run per row here (SQLite runs them in C
        from one prepared statement); PostgreSQL overrides it with one multi-row statement, for which
        `types` names the PostgreSQL type of each `?` of `row` (comma-separated)."""
        if rows:
            cur.executemany(self._sql(f"{head} VALUES {row} {tail}"), rows)

    def lock_units(self, cur: Cursor, first_seen: dict[str, float]) -> None:
        """Take the row locks of these units in one order (unit id), creating missing rows, before a
        transaction that writes them in several statements (the engine hook; SQLite needs none: BEGIN
        IMMEDIATE already serialises writers)."""

    def is_transient(self, exc: BaseException) -> bool:
        """A failure that the same transaction, retried at once, gets past (a lost deadlock or race)."""
        return False

    @staticmethod
    def _rows(cur: Cursor) -> list[Row]:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.transaction() as cur:
            return self._rows(self._x(cur, sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.transaction() as cur:
            return self._x(cur, sql, params).rowcount

    # -- migrations ---------------------------------------------------------------------------
    @staticmethod
    def migration_files() -> list[tuple[int, str, str]]:
        """(version, name, sql) of fleet/migrations/NNNN_name.sql, in order."""
        out = []
        for entry in resources.files("fleet.migrations").iterdir():
            if entry.name.endswith(".sql") and entry.name[:4].isdigit():
                out.append((int(entry.name[:4]), entry.name, entry.read_text()))
        return sorted(out)

    def schema_version(self) -> int:
        with self.transaction() as cur:
            self._x(cur, "CREATE TABLE IF NOT EXISTS schema_version "
                         "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            row = self._x(cur, "SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; returns the names applied."""
        self.schema_version()  # creates the bookkeeping table
        applied: list[str] = []
        for version, name, sql in self.migration_files():
            with self.transaction() as cur:
                self._lock_migrations(cur)
                done = self._x(cur, "SELECT 1 FROM schema_version WHERE version = ?", (version,)).fetchone()
                if done:
                    continue
                for statement in _split_sql(sql):
                    cur.execute(statement)
                self._x(cur, "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time()))
                applied.append(name)
                log.info("applied migration %s", name)
        return applied


def _split_sql(script: str) -> list[str]:
    """Statements of a migration file: `;` at a line end separates them; `--` comments dropped."""
    lines = [ln.split("--", 1)[0].rstrip() for ln in script.splitlines()]
    statements, current = [], []
    for line in lines:
        if not line.strip():
            continue
        current.append(line)
        if line.endswith(";"):
            statements.append("\n".join(current).rstrip(";"))
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current))
    return statements



class SqliteEngine(Engine):
    dialect = "sqlite"

    def __init__(self, path: Path, tz: dt.tzinfo = dt.UTC) -> None:
        super().__init__(tz)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, the same way as on PostgreSQL.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the ingest writer
        conn.execute("PRAGMA synchronous=FULL")  # a PUBACK is only sent after commit: commit must last
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _begin(self, cur: Cursor) -> None:
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on lock upgrade.
        cur.execute("BEGIN IMMEDIATE")

    def is_transient(self, exc: BaseException) -> bool:
        # busy_timeout ran out while another process held the write lock.
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class PostgresEngine(Engine):
    dialect = "postgres"

    def __init__(self, url: str, tz: dt.tzinfo = dt.UTC) -> None:
        super().__init__(tz)
        self.url = url
        self._sql_cache: dict[str, str] = {}
        self._unnest_cache: dict[tuple[str, str, str, str], str] = {}

    def _connect(self) -> Any:
        import psycopg  # imported lazily: the SQLite default must not need the driver

        try:
            # autocommit: transactions are the explicit BEGIN/COMMIT of Store.transaction().
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    def _sql(self, sql: str) -> str:
        converted = self._sql_cache.get(sql)
        if converted is None:
            converted = sql.replace("?", "%s")
            self._sql_cache[sql] = converted
        return converted

    def _lock_migrations(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(727100)")

    def _insert_rows(self, cur: Cursor, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]],
                     types: str) -> None:
        """All rows in one statement, `head SELECT row FROM unnest(col1[], col2[], ...) tail`: one array
        parameter per column, so one parse, plan and round trip for thousands of rows (and a short
        statement text that is prepared once). Rows are written in the order given (callers sort them)."""
        if not rows:
            return
        key = (head, row, tail, types)
        sql = self._unnest_cache.get(key)
        if sql is None:
            kinds = [t.strip() for t in types.split(",")]
            names = iter(f"c{i}" for i in range(len(kinds)))
            select = re.sub(r"\?", lambda _m: f"t.{next(names)}", row.strip()[1:-1])
            if row.count("?") != len(kinds):
                raise ValueError(f"{len(kinds)} types for {row.count('?')} placeholders in {row!r}")
            arrays = ", ".join(f"%b::{k}[]" for k in kinds)  # binary: no text quoting of each element
            cols = ", ".join(f"c{i}" for i in range(len(kinds)))
            sql = f"{head} SELECT {select} FROM unnest({arrays}) AS t({cols}) {tail}"
            self._unnest_cache[key] = sql
        cur.execute(sql, [list(col) for col in zip(*rows, strict=True)])

    def lock_units(self, cur: Cursor, first_seen: dict[str, float]) -> None:
        if not first_seen:
            return
        ids = sorted(first_seen)
        # New units first (an insert locks the new row; ON CONFLICT DO NOTHING locks nothing that exists),
        # then every row in the same order. COLLATE "C" is byte order, which is Python's str order for UTF-8.
        self._insert_rows(cur, "INSERT INTO units (unit_id, first_seen)", "(?, ?)",
                          "ON CONFLICT (unit_id) DO NOTHING", [(u, first_seen[u]) for u in ids], "text, float8")
        cur.execute('SELECT unit_id FROM units WHERE unit_id = ANY(%s) ORDER BY unit_id COLLATE "C" '
                    "FOR NO KEY UPDATE", [ids])

    def is_transient(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
                          | psycopg.errors.LockNotAvailable)
