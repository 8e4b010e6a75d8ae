"""The fleet database, split by job: `engine` (connections, transactions, migrations), `writes` (the
ingest writer), `dashboard` (the API's reads and labels), `users` (users and sessions). `Store` is all
of them over one engine; `Store.open(url, tz)` picks SQLite or PostgreSQL from the URL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from contract.errors import ConfigError
from fleet.store.dashboard import DashboardQueries, day_bounds
from fleet.store.engine import Cursor, Engine, PostgresEngine, Row, SqliteEngine
from fleet.store.models import ModelRegistry
from fleet.store.users import UsersAndSessions
from fleet.store.writes import IngestBatch, IngestWrites, Quarantined, local_day

__all__ = ["Cursor", "DashboardQueries", "Engine", "IngestBatch", "IngestWrites", "ModelRegistry", "PostgresStore",
           "Quarantined", "Row",
           "SqliteStore", "Store", "UsersAndSessions", "day_bounds", "local_day"]


class Store(IngestWrites, DashboardQueries, UsersAndSessions, ModelRegistry):
    """A fleet database with every job's queries."""

    @staticmethod
    def open(url: str, tz: dt.tzinfo = dt.UTC) -> Store:
        if url.startswith(("postgresql://", "postgres://")):
            return PostgresStore(url, tz)
        if url.startswith("sqlite:///"):
            return SqliteStore(Path(url.removeprefix("sqlite:///")), tz)
        raise ConfigError(f"unsupported database URL {url!r} (use sqlite:///path or postgresql://...)")


class SqliteStore(SqliteEngine, Store):
    pass


class PostgresStore(PostgresEngine, Store):
    pass
