"""The durable outbox: alerts survive broker outages, process kills and power cuts.

Every message the fleet must receive is committed to SQLite (WAL, `synchronous=FULL`) before
it is handed to MQTT, and deleted only once the broker acknowledged it (PUBACK). Delivery is
therefore at-least-once; the fleet deduplicates by `event_id`.

The queue is bounded: beyond `max_rows` the oldest rows are evicted, and the eviction is
counted in the same database so the count survives restarts and reaches the fleet in the
heartbeat. Snapshots (JPEG) are rows too, with their own byte budget so a burst of pictures
never pushes out the alerts themselves.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Kind = Literal["event", "snapshot"]
DEFAULT_MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: Kind
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True)
class Message:
    """What to enqueue: one MQTT publish (QoS 1, not retained)."""

    topic: str
    payload: bytes
    kind: Kind = "event"


class Outbox:
    """A thread-safe, bounded, persistent FIFO of MQTT messages.

    >>> box = Outbox(":memory:", max_rows=10)
    >>> [row_id] = box.put([Message("t", b"{}")])
    >>> box.ack([row_id]), box.depth()
    (1, 0)
    """

    def __init__(self, path: str | Path, max_rows: int = 100_000,
                 max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> None:
        if max_rows < 1 or max_snapshot_bytes < 0:
            raise ValueError("max_rows must be >= 1 and max_snapshot_bytes >= 0")
        self.path = str(path)
        self.max_rows = max_rows
        self.max_snapshot_bytes = max_snapshot_bytes
        self._lock = threading.Lock()
        self._db = _open(self.path)
        self._depth: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._snapshot_bytes: int = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE kind = 'snapshot'").fetchone()[0]
        if self._depth:
            log.info("outbox %s holds %s undelivered messages", self.path, self._depth)

    # --- producer side ----------------------------------------------------------------------

    def put(self, messages: Sequence[Message]) -> list[int]:
        """Commit `messages` in one durable transaction (fsync'd) and return their row ids.

        Evicts the oldest rows (counted) when the queue would exceed its bounds.
        """
        now = time.time()
        with self._lock, self._db:
            ids: list[int] = []
            for msg in messages:
                if msg.kind == "snapshot" and not self._make_room_for_snapshot(len(msg.payload)):
                    continue
                cur = self._db.execute(
                    "INSERT INTO outbox (kind, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (msg.kind, msg.topic, msg.payload, now))
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
                self._depth += 1
                if msg.kind == "snapshot":
                    self._snapshot_bytes += len(msg.payload)
            if self._depth > self.max_rows:
                self._evict(self._depth - self.max_rows)
            return ids

    def _make_room_for_snapshot(self, size: int) -> bool:
        if size > self.max_snapshot_bytes:
            log.warning("snapshot of %s bytes exceeds the outbox snapshot budget; dropped", size)
            self._bump("evicted_snapshot", 1)
            return False
        while self._snapshot_bytes + size > self.max_snapshot_bytes:
            row = self._db.execute("SELECT id, LENGTH(payload) FROM outbox WHERE kind = 'snapshot' "
                                   "ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._snapshot_bytes -= row[1]
            self._depth -= 1
            self._bump("evicted_snapshot", 1)
        return True

    def _evict(self, n: int) -> None:
        rows = self._db.execute("SELECT id, kind, LENGTH(payload) FROM outbox ORDER BY id LIMIT ?",
                                (n,)).fetchall()
        self._db.execute("DELETE FROM outbox WHERE id <= ?", (rows[-1][0],))
        events = sum(1 for _, kind, _ in rows if kind == "event")
        self._snapshot_bytes -= sum(size for _, kind, size in rows if kind == "snapshot")
        self._depth -= len(rows)
        self._bump("evicted_event", events)
        self._bump("evicted_snapshot", len(rows) - events)
        log.warning("outbox full (%s rows): evicted the %s oldest messages", self.max_rows, len(rows))

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    # --- consumer side ----------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """The oldest undelivered rows with id > after_id, in commit order."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, topic, payload, created FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def ack(self, row_ids: Iterable[int]) -> int:
        """Delete delivered rows; returns how many were still there (evicted rows are skipped).

        A lost ack only means a duplicate after a power cut, so this commit need not be FULL.
        """
        ids = list(row_ids)
        if not ids:
            return 0
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._db:
                    marks = ",".join("?" * len(ids))
                    snap = self._db.execute(
                        f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE kind = 'snapshot' "
                        f"AND id IN ({marks})", ids).fetchone()[0]
                    deleted = self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids).rowcount
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            self._depth -= deleted
            self._snapshot_bytes -= snap
            return deleted

    # --- gauges -----------------------------------------------------------------------------

    def depth(self) -> int:
        """Undelivered rows (events and snapshots)."""
        with self._lock:
            return self._depth

    def evicted(self) -> int:
        """Events evicted because the outbox was full, over the outbox's whole life."""
        return self._counter("evicted_event")

    def evicted_snapshots(self) -> int:
        return self._counter("evicted_snapshot")

    def _counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def integrity_ok(self) -> bool:
        with self._lock:
            return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open(path: str) -> sqlite3.Connection:
    """Open (creating owner-only: snapshots may show people) and configure the database.

    A file that is not a readable database is moved aside, never silently reused.
    """
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        return _configure(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        aside = f"{path}.corrupt-{int(time.time())}"
        log.error("outbox %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
        os.replace(path, aside)
        return _configure(sqlite3.connect(path, check_same_thread=False, isolation_level=None))


def _configure(db: sqlite3.Connection) -> sqlite3.Connection:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    # `with db:` below must open real transactions: use explicit BEGIN via the default handler.
    db.isolation_level = "DEFERRED"
    return db
