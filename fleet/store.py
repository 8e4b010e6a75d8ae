"""Persistence: one schema, two engines (SQLite embedded, PostgreSQL at scale).

Every query is written once with `?` placeholders in SQL both engines accept; the only
engine-specific code is connecting, the placeholder style and the migration lock. Connections are
per thread (the ingest writer has its own; API worker threads share nothing), which is what both
sqlite3 and psycopg expect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from contract.commands import ConfigReportedPayload
from contract.errors import ConfigError
from contract.mqtt import CommandResultPayload, EventPayload, HeartbeatPayload, StatusPayload
from fleet.errors import StoreError

log = logging.getLogger(__name__)

# Alerts are the `start` of an incident that a person should look at.
ALERT_TYPES = ("ebike_blocked", "blocking_disabled", "camera_fault")
EBIKE_TYPES = ("ebike_blocked", "blocking_disabled")
VERDICTS = ("acknowledged", "false_alarm", "confirmed")

Row = dict[str, Any]


class _Cursor(Protocol):
    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: Any, params: Iterable[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


def local_day(ts: float, tz: dt.tzinfo) -> str:
    """The calendar day (YYYY-MM-DD) that the instant `ts` falls on in the zone `tz`."""
    return dt.datetime.fromtimestamp(ts, tz).date().isoformat()


def day_bounds(day: dt.date, tz: dt.tzinfo) -> tuple[float, float]:
    """[start, end) of a calendar day in `tz` as timestamps; 23 or 25 h long on a DST change."""
    start = dt.datetime.combine(day, dt.time(), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    return start.timestamp(), end.timestamp()


# What a status names about its unit; the store keeps old values where a new status gives none (COALESCE).
_STATUS_NAMES = ("software", "model_id", "site", "building", "elevator")


@dataclass
class IngestBatch:
    """What the writer thread applies in one transaction; later messages of a unit win."""

    statuses: dict[str, tuple[StatusPayload, float]] = field(default_factory=dict)
    heartbeats: dict[str, tuple[HeartbeatPayload, float]] = field(default_factory=dict)
    # (unit_id, hour) -> [beats, fps_sum, inference_p95_max, camera_bad]
    rollup: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    events: list[tuple[EventPayload, float, str]] = field(default_factory=list)
    snapshots: list[tuple[str, str, bytes, float]] = field(default_factory=list)
    cmd_results: list[tuple[str, CommandResultPayload, float]] = field(default_factory=list)
    config_reports: dict[str, tuple[ConfigReportedPayload, float]] = field(default_factory=dict)

    def add_config_report(self, unit_id: str, report: ConfigReportedPayload, received_at: float) -> None:
        current = self.config_reports.get(unit_id)
        if current is None or report.ts > current[0].ts:
            self.config_reports[unit_id] = (report, received_at)

    def add_status(self, unit_id: str, status: StatusPayload, received_at: float) -> None:
        """The later state wins; names it leaves out (a bare LWT) keep the earlier ones, as across batches."""
        earlier = self.statuses.get(unit_id)
        if earlier is not None:
            kept = {k: getattr(earlier[0], k) for k in _STATUS_NAMES if getattr(status, k) is None}
            status = status.model_copy(update=kept)
        self.statuses[unit_id] = (status, received_at)

    def add_heartbeat(self, hb: HeartbeatPayload, received_at: float) -> None:
        self.heartbeats[hb.unit_id] = (hb, received_at)
        acc = self.rollup.setdefault((hb.unit_id, int(received_at // 3600)), [0, 0.0, 0.0, 0])
        acc[0] += 1
        acc[1] += hb.fps
        acc[2] = max(acc[2], hb.inference_p95_ms)
        acc[3] += 0 if hb.camera == "online" else 1

    def __len__(self) -> int:
        return (len(self.statuses) + len(self.heartbeats) + len(self.events) + len(self.snapshots)
                + len(self.cmd_results) + len(self.config_reports))


class Store:
    """A fleet database. `Store.open(url, tz)` picks the engine from the URL scheme; `tz` is the site's time
    zone, whose calendar days the `day` column of new events holds."""

    dialect = "abstract"

    def __init__(self, tz: dt.tzinfo = dt.UTC) -> None:
        self.tz = tz
        self._local = threading.local()
        self._all_conns: list[Any] = []
        self._conns_lock = threading.Lock()

    @staticmethod
    def open(url: str, tz: dt.tzinfo = dt.UTC) -> Store:
        if url.startswith(("postgresql://", "postgres://")):
            return PostgresStore(url, tz)
        if url.startswith("sqlite:///"):
            return SqliteStore(Path(url.removeprefix("sqlite:///")), tz)
        raise ConfigError(f"unsupported database URL {url!r} (use sqlite:///path or postgresql://...)")

    # -- engine hooks -------------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _lock_migrations(self, cur: _Cursor) -> None:
        """Serialise concurrent migrators (several fleet servers starting at once)."""

    def _begin(self, cur: _Cursor) -> None:
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
    def transaction(self) -> Iterator[_Cursor]:
        cur: _Cursor = self._conn().cursor()
        self._begin(cur)
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _x(self, cur: _Cursor, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        cur.execute(self._sql(sql), params)
        return cur

    def _xmany(self, cur: _Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(self._sql(sql), rows)

    @staticmethod
    def _rows(cur: _Cursor) -> list[Row]:
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

    # -- ingest -------------------------------------------------------------------------------
    def write_batch(self, batch: IngestBatch) -> list[EventPayload]:
        """Apply one batch atomically; returns the events that were new (not duplicates)."""
        with self.transaction() as cur:
            # Heartbeats first, then only statuses newer than the unit's heartbeat in this batch:
            # an LWT `offline` after the last beat must win, an old `offline` must not.
            self._write_heartbeats(cur, batch)
            self._write_statuses(cur, batch)
            new_events = self._write_events(cur, batch)
            self._xmany(cur, "INSERT INTO snapshots (unit_id, snapshot_id, received_at, data) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (unit_id, snapshot_id) DO NOTHING",
                        [(u, s, at, data) for u, s, data, at in batch.snapshots])
            # A unit may only answer commands that were sent to it.
            self._xmany(cur, "UPDATE commands SET result_ok = ?, result_detail = ?, result_at = ? "
                             "WHERE command_id = ? AND unit_id = ?",
                        [(int(r.ok), r.detail, at, r.command_id, unit) for unit, r, at in batch.cmd_results])
            self._write_config_reports(cur, batch)
        return new_events

    def _write_config_reports(self, cur: _Cursor, batch: IngestBatch) -> None:
        rows = [(unit, at, int(r.ok), r.version, r.detail, json.dumps(r.config) if r.config else None, r.ts, at)
                for unit, (r, at) in batch.config_reports.items()]
        # Newest device `ts` wins (`version` is None for set_config answers): a re-delivered or older report is a no-op.
        # last_seen is left alone: a retained message re-delivered by the broker proves nothing about the unit.
        self._xmany(cur, """
            INSERT INTO units (unit_id, first_seen, config_applied, config_version, config_detail, config_reported,
                               config_ts, config_received_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (unit_id) DO UPDATE SET
                config_applied = excluded.config_applied, config_version = excluded.config_version,
                config_detail = excluded.config_detail, config_reported = excluded.config_reported,
                config_ts = excluded.config_ts, config_received_at = excluded.config_received_at
            WHERE units.config_ts IS NULL OR excluded.config_ts > units.config_ts""", rows)

    def _write_statuses(self, cur: _Cursor, batch: IngestBatch) -> None:
        rows = [(unit, s.state, at, at, at, s.software, s.model_id, s.site, s.building, s.elevator)
                for unit, (s, at) in batch.statuses.items()
                if unit not in batch.heartbeats or batch.heartbeats[unit][1] <= at]
        self._xmany(cur, """
            INSERT INTO units (unit_id, state, state_at, last_seen, first_seen, software, model_id,
                               site, building, elevator)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (unit_id) DO UPDATE SET
                state = excluded.state, state_at = excluded.state_at, last_seen = excluded.last_seen,
                software = COALESCE(excluded.software, units.software),
                model_id = COALESCE(excluded.model_id, units.model_id),
                site = COALESCE(excluded.site, units.site),
                building = COALESCE(excluded.building, units.building),
                elevator = COALESCE(excluded.elevator, units.elevator)""", rows)

    def _write_heartbeats(self, cur: _Cursor, batch: IngestBatch) -> None:
        # A heartbeat proves the unit runs, so it also says `online` (a lost retained status must
        # not leave a working unit marked offline).
        rows = [(unit, at, at, at, at, hb.software, hb.model_id, hb.camera, hb.relay, int(hb.blocking_enabled),
                 hb.fps, hb.inference_p95_ms, hb.outbox_depth, hb.site, hb.building, hb.elevator)
                for unit, (hb, at) in batch.heartbeats.items()]
        self._xmany(cur, """
            INSERT INTO units (unit_id, state, state_at, last_seen, last_heartbeat, first_seen, software, model_id,
                               camera, relay, blocking_enabled, fps, inference_p95_ms, outbox_depth,
                               site, building, elevator)
            VALUES (?, 'online', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (unit_id) DO UPDATE SET
                state = 'online', state_at = excluded.state_at, last_seen = excluded.last_seen,
                last_heartbeat = excluded.last_heartbeat, software = excluded.software,
                model_id = excluded.model_id, camera = excluded.camera, relay = excluded.relay,
                blocking_enabled = excluded.blocking_enabled, fps = excluded.fps,
                inference_p95_ms = excluded.inference_p95_ms, outbox_depth = excluded.outbox_depth,
                site = COALESCE(excluded.site, units.site),
                building = COALESCE(excluded.building, units.building),
                elevator = COALESCE(excluded.elevator, units.elevator)""", rows)
        self._xmany(cur, """
            INSERT INTO heartbeat_hours (unit_id, hour, beats, fps_sum, inference_p95_max, camera_bad)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (unit_id, hour) DO UPDATE SET
                beats = heartbeat_hours.beats + excluded.beats,
                fps_sum = heartbeat_hours.fps_sum + excluded.fps_sum,
                inference_p95_max = CASE WHEN excluded.inference_p95_max > heartbeat_hours.inference_p95_max
                                         THEN excluded.inference_p95_max ELSE heartbeat_hours.inference_p95_max END,
                camera_bad = heartbeat_hours.camera_bad + excluded.camera_bad""",
                    [(u, h, int(a[0]), a[1], a[2], int(a[3])) for (u, h), a in batch.rollup.items()])

    def _write_events(self, cur: _Cursor, batch: IngestBatch) -> list[EventPayload]:
        if not batch.events:
            return []
        ids = [e.event_id for e, _, _ in batch.events]
        existing: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            existing.update(r[0] for r in self._x(
                cur, f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk).fetchall())
        new: list[EventPayload] = []
        rows = []
        # `day` is fixed here, in Python, in the site's zone: both engines get the same label (SQLite has
        # no zone database) and daily counts stay an index lookup. Decision: no migration when the zone
        # changes; rows already stored keep the day they were stored with (UTC before `timezone` existed).
        for ev, at, raw in batch.events:
            if ev.event_id in existing:
                continue
            existing.add(ev.event_id)
            new.append(ev)
            snap = ev.snapshot.removeprefix("snapshots/") if ev.snapshot else None
            rows.append((ev.event_id, ev.incident_id, ev.unit_id, ev.type, ev.phase, ev.ts, local_day(ev.ts, self.tz),
                         at, ev.cls, ev.confidence, ev.hold_s, snap, ev.detail, raw))
        # ON CONFLICT still matters: another fleet server may insert the same id concurrently.
        self._xmany(cur, """
            INSERT INTO events (event_id, incident_id, unit_id, type, phase, ts, day, received_at, cls,
                                confidence, hold_s, snapshot_id, detail, payload)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (event_id) DO NOTHING""", rows)
        # Units that only ever sent events still belong on the dashboard.
        self._xmany(cur, "INSERT INTO units (unit_id, first_seen, last_seen) VALUES (?, ?, ?) "
                         "ON CONFLICT (unit_id) DO UPDATE SET last_seen = excluded.last_seen",
                    [(e.unit_id, at, at) for e, at, _ in batch.events])
        return new

    # -- dashboard queries --------------------------------------------------------------------
    def list_units(self, q: str = "", site: str = "", building: str = "") -> list[Row]:
        where, params = ["1=1"], []
        if q:
            where.append("(LOWER(unit_id) LIKE ? OR LOWER(COALESCE(site, '')) LIKE ? "
                         "OR LOWER(COALESCE(building, '')) LIKE ? OR LOWER(COALESCE(elevator, '')) LIKE ?)")
            params += [f"%{q.lower()}%"] * 4
        # Units that never reported a site/building are listed (and filtered) as "Unassigned".
        if site:
            where.append("COALESCE(site, 'Unassigned') = ?")
            params.append(site)
        if building:
            where.append("COALESCE(building, 'Unassigned') = ?")
            params.append(building)
        return self.query(f"SELECT * FROM units WHERE {' AND '.join(where)} "
                          "ORDER BY site, building, elevator, unit_id", params)

    def sites_and_buildings(self) -> list[tuple[str, str]]:
        rows = self.query("SELECT DISTINCT COALESCE(site, 'Unassigned') AS site, "
                          "COALESCE(building, 'Unassigned') AS building FROM units")
        return sorted((r["site"], r["building"]) for r in rows)

    def get_unit(self, unit_id: str) -> Row | None:
        rows = self.query("SELECT * FROM units WHERE unit_id = ?", (unit_id,))
        return rows[0] if rows else None

    _ALERT_SELECT = """
        SELECT e.event_id, e.incident_id, e.unit_id, e.type, e.ts, e.received_at, e.cls, e.confidence,
               e.hold_s, e.snapshot_id, e.detail, u.site, u.building, u.elevator,
               l.verdict, l.username AS labelled_by, l.labelled_at,
               (SELECT 1 FROM snapshots s WHERE s.unit_id = e.unit_id AND s.snapshot_id = e.snapshot_id)
                   AS has_snapshot
        FROM events e
        LEFT JOIN units u ON u.unit_id = e.unit_id
        LEFT JOIN labels l ON l.event_id = e.event_id"""

    def list_alerts(self, status: str = "open", q: str = "", unit_id: str = "", building: str = "",
                    type_: str = "", since: float | None = None, until: float | None = None,
                    received_after: float | None = None, limit: int = 100) -> list[Row]:
        where = [f"e.phase = 'start' AND e.type IN ({','.join('?' * len(ALERT_TYPES))})"]
        params: list[Any] = list(ALERT_TYPES)
        if status == "open":
            where.append("l.verdict IS NULL")
        elif status in VERDICTS:
            where.append("l.verdict = ?")
            params.append(status)
        if q:
            where.append("(LOWER(e.unit_id) LIKE ? OR LOWER(COALESCE(u.building, '')) LIKE ? "
                         "OR LOWER(COALESCE(u.site, '')) LIKE ? OR LOWER(COALESCE(e.cls, '')) LIKE ?)")
            params += [f"%{q.lower()}%"] * 4
        for column, value in (("e.unit_id", unit_id), ("u.building", building), ("e.type", type_)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        for clause, bound in (("e.ts >= ?", since), ("e.ts < ?", until), ("e.received_at > ?", received_after)):
            if bound is not None:
                where.append(clause)
                params.append(bound)
        params.append(max(1, min(limit, 1000)))
        return self.query(f"{self._ALERT_SELECT} WHERE {' AND '.join(where)} "
                          "ORDER BY e.received_at DESC, e.event_id LIMIT ?", params)

    def get_alert(self, event_id: str) -> Row | None:
        rows = self.query(f"{self._ALERT_SELECT} WHERE e.event_id = ?", (event_id,))
        return rows[0] if rows else None

    def get_snapshot(self, unit_id: str, snapshot_id: str) -> bytes | None:
        rows = self.query("SELECT data FROM snapshots WHERE unit_id = ? AND snapshot_id = ?", (unit_id, snapshot_id))
        return bytes(rows[0]["data"]) if rows else None

    def set_label(self, event_id: str, verdict: str, username: str) -> None:
        if verdict not in VERDICTS:
            raise StoreError(f"unknown verdict {verdict!r}")
        self.execute("INSERT INTO labels (event_id, verdict, username, labelled_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (event_id) DO UPDATE SET verdict = excluded.verdict, "
                     "username = excluded.username, labelled_at = excluded.labelled_at",
                     (event_id, verdict, username, time.time()))

    def labelled_dataset(self) -> list[Row]:
        return self.query("""
            SELECT e.event_id, e.unit_id, e.type, e.ts, e.cls, e.confidence, u.site, u.building,
                   l.verdict, l.username AS labelled_by, l.labelled_at, s.snapshot_id, s.data
            FROM labels l
            JOIN events e ON e.event_id = l.event_id
            LEFT JOIN units u ON u.unit_id = e.unit_id
            LEFT JOIN snapshots s ON s.unit_id = e.unit_id AND s.snapshot_id = e.snapshot_id
            ORDER BY e.ts""")

    def daily_counts(self, first_day: str, last_day: str) -> list[Row]:
        marks = ",".join("?" * len(EBIKE_TYPES))
        return self.query(f"""
            SELECT e.day, COALESCE(u.building, 'unassigned') AS building, COUNT(*) AS n
            FROM events e LEFT JOIN units u ON u.unit_id = e.unit_id
            WHERE e.phase = 'start' AND e.type IN ({marks}) AND e.day >= ? AND e.day <= ?
            GROUP BY e.day, COALESCE(u.building, 'unassigned') ORDER BY e.day""",
                          [*EBIKE_TYPES, first_day, last_day])

    def create_command(self, command_id: str, unit_id: str, name: str, username: str) -> None:
        self.execute("INSERT INTO commands (command_id, unit_id, name, requested_by, requested_at) "
                     "VALUES (?, ?, ?, ?, ?)", (command_id, unit_id, name, username, time.time()))

    def get_command(self, command_id: str) -> Row | None:
        rows = self.query("SELECT * FROM commands WHERE command_id = ?", (command_id,))
        return rows[0] if rows else None

    def count_events(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM events")[0]["n"])

    # -- users and sessions -------------------------------------------------------------------
    def add_user(self, username: str, role: str, password_hash: str) -> None:
        self.execute("INSERT INTO users (username, role, password_hash, created_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (username) DO UPDATE SET role = excluded.role, "
                     "password_hash = excluded.password_hash", (username, role, password_hash, time.time()))

    def get_user(self, username: str) -> Row | None:
        rows = self.query("SELECT * FROM users WHERE username = ?", (username,))
        return rows[0] if rows else None

    def create_session(self, token_hash: str, username: str, csrf: str, ttl_s: float) -> None:
        now = time.time()
        with self.transaction() as cur:
            self._x(cur, "DELETE FROM sessions WHERE expires_at < ?", (now,))
            self._x(cur, "INSERT INTO sessions (token_hash, username, csrf_token, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?)", (token_hash, username, csrf, now, now + ttl_s))

    def get_session(self, token_hash: str) -> Row | None:
        rows = self.query("SELECT s.username, s.csrf_token, s.expires_at, u.role FROM sessions s "
                          "JOIN users u ON u.username = s.username WHERE s.token_hash = ? AND s.expires_at > ?",
                          (token_hash, time.time()))
        return rows[0] if rows else None

    def delete_session(self, token_hash: str) -> None:
        self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


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


class SqliteStore(Store):
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

    def _begin(self, cur: _Cursor) -> None:
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on lock upgrade.
        cur.execute("BEGIN IMMEDIATE")


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, tz: dt.tzinfo = dt.UTC) -> None:
        super().__init__(tz)
        self.url = url
        self._sql_cache: dict[str, str] = {}

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

    def _lock_migrations(self, cur: _Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(727100)")
