"""Persistence plumbing: one schema, two engines (SQLite embedded, PostgreSQL at scale).

Every query is written once with `?` placeholders in SQL both engines accept; the only
engine-specific code is connecting and the placeholder style. Migrations: yoyo-migrations. Connections are
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
    def migration_url(self) -> str:
        """This database as yoyo-migrations names it."""
        raise NotImplementedError

    def migrate(self, migrations_dir: Path | None = None) -> list[str]:
        """Apply pending migrations (yoyo-migrations: sqlparse splits the statements, a lock table serialises
        several servers starting at once); returns the ids applied. `migrations_dir` defaults to
        fleet/migrations."""
        from yoyo import get_backend, read_migrations

        with contextlib.ExitStack() as stack:
            folder = migrations_dir or stack.enter_context(resources.as_file(resources.files("fleet.migrations")))
            found = read_migrations(str(folder))
            # Only NNNN_name.sql: the folder is also a Python package (its __init__.py is no migration).
            migrations = found.__class__([m for m in found if m.id[:4].isdigit()], found.post_apply)
            backend = get_backend(self.migration_url())
            try:
                with backend.lock(timeout=60):
                    self._adopt_legacy_versions(backend, migrations)
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
            finally:
                backend.connection.close()
        for migration in pending:
            log.info("applied migration %s", migration.id)
        return [m.id for m in pending]

    def _adopt_legacy_versions(self, backend: Any, migrations: Any) -> None:
        """Databases migrated before yoyo recorded their versions in `schema_version`: mark those as applied."""
        tables = set(backend.list_tables())
        if "schema_version" not in tables or backend.get_applied_migration_hashes():
            return
        done = {int(r[0]) for r in backend.execute("SELECT version FROM schema_version").fetchall()}
        adopted = [m for m in migrations if m.id[:4].isdigit() and int(m.id[:4]) in done]
        backend.mark_migrations(migrations.__class__(adopted))
        log.info("adopted %d migrations applied before yoyo", len(adopted))

    def applied_migrations(self) -> list[str]:
        from yoyo import get_backend

        backend = get_backend(self.migration_url())
        try:
            rows = backend.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc").fetchall() \
                if "_yoyo_migration" in set(backend.list_tables()) else []
        finally:
            backend.connection.close()
        return [str(r[0]) for r in rows]

    def schema_version(self) -> int:
        """The number of the newest migration applied (NNNN of NNNN_name); 0 for an empty database."""
        return max((int(m[:4]) for m in self.applied_migrations() if m[:4].isdigit()), default=0)


class SqliteEngine(Engine):
    dialect = "sqlite"

    def __init__(self, path: Path, tz: dt.tzinfo = dt.UTC) -> None:
        super().__init__(tz)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def migration_url(self) -> str:
        return f"sqlite:///{self.path}"

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

    def migration_url(self) -> str:
        # yoyo's psycopg 3 backend
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]

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
        # One statement, rows in unit-id order: a missing row is inserted (and so locked), an existing one is
        # locked by DO UPDATE and left unchanged by its `WHERE false` (PostgreSQL locks every conflicting row
        # of an ON CONFLICT DO UPDATE, updated or not).
        self._insert_rows(cur, "INSERT INTO units (unit_id, first_seen)", "(?, ?)",
                          "ON CONFLICT (unit_id) DO UPDATE SET first_seen = units.first_seen WHERE false",
                          [(u, first_seen[u]) for u in sorted(first_seen)], "text, float8")

    def is_transient(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
                          | psycopg.errors.LockNotAvailable)
