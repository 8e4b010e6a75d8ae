"""The durable outbox: alerts survive broker outages, process kills and power cuts.

Every message the fleet must receive is committed to SQLite (WAL, `synchronous=FULL`) before
it is handed to MQTT, and deleted only once the broker acknowledged it (PUBACK). Delivery is
therefore at-least-once; the fleet deduplicates by `event_id`.

The queue is bounded: beyond `max_rows` the oldest rows are evicted, and the eviction is
counted in the same database so the count survives restarts and reaches the fleet in the
heartbeat. Snapshots (JPEG) are rows too, with their own byte budget so a burst of pictures
never pushes out the alerts themselves.

A write can fail (a full disk: `database or disk is full`, `disk I/O error`). Then, in this order:
the reserve file kept beside the database is deleted (on a full filesystem even a DELETE needs room
in the write-ahead log: the reserve gives it that room, and is re-made once the disk has space), the
batch's snapshots are dropped, stored snapshots are deleted (their pages are reused), the oldest
events are evicted; if the database still takes nothing, messages wait in a bounded in-memory queue
(`memory_max`) that is published like rows and moved into the database as soon as it accepts writes
again. Every loss is counted (`evicted()` / `evicted_snapshots()`, in heartbeats) and logged; counts
that could not be written yet are kept in memory and added to the database later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Kind = Literal["event", "snapshot"]
DEFAULT_MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
DEFAULT_MEMORY_MAX = 1000  # messages kept in RAM while the database cannot be written
DEFAULT_RESERVE_BYTES = 1024 * 1024  # released on a full disk so that deleting rows can proceed

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
                 max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES, memory_max: int = DEFAULT_MEMORY_MAX,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES) -> None:
        if max_rows < 1 or max_snapshot_bytes < 0 or memory_max < 1:
            raise ValueError("max_rows and memory_max must be >= 1 and max_snapshot_bytes >= 0")
        self.path = str(path)
        self.max_rows = max_rows
        self.max_snapshot_bytes = max_snapshot_bytes
        self.memory_max = memory_max
        self._lock = threading.Lock()
        self._db = _open(self.path)
        self._depth: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._snapshot_bytes: int = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE kind = 'snapshot'").fetchone()[0]
        # Ids are assigned here (not by SQLite) so rows held in memory keep their place in the order.
        self._next_id: int = 1 + self._db.execute(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM outbox), 0), "
            "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))").fetchone()[0]
        self._memory: deque[OutboxRow] = deque()  # written when the database could not be
        self._unsaved: dict[str, int] = {}  # loss counters not yet in the database
        self.reserve_bytes = reserve_bytes if self.path != ":memory:" else 0
        self._reserve = Path(self.path + ".reserve")
        self._make_reserve()
        if self._depth:
            log.info("outbox %s holds %s undelivered messages", self.path, self._depth)

    # --- producer side ----------------------------------------------------------------------

    def put(self, messages: Sequence[Message]) -> list[int]:
        """Commit `messages` in one durable transaction (fsync'd) and return their row ids.

        Evicts the oldest rows (counted) when the queue would exceed its bounds. If the database
        cannot be written, degrades as the module docstring says; never raises for a full disk."""
        now = time.time()
        with self._lock:
            self._flush_memory()
            rows = [OutboxRow(self._take_id(), m.kind, m.topic, m.payload, now) for m in messages]
            try:
                return self._insert(rows)
            except sqlite3.Error as exc:
                return self._put_under_pressure(rows, exc)

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _insert(self, rows: Sequence[OutboxRow]) -> list[int]:
        """One transaction: the rows, evictions and pending counters; all or nothing."""
        depth, snapshot_bytes = self._depth, self._snapshot_bytes
        unsaved_before = dict(self._unsaved)
        try:
            with self._db:
                ids: list[int] = []
                for row in rows:
                    if row.kind == "snapshot" and not self._make_room_for_snapshot(len(row.payload)):
                        continue
                    self._db.execute("INSERT INTO outbox (id, kind, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                                     (row.id, row.kind, row.topic, row.payload, row.created))
                    ids.append(row.id)
                    self._depth += 1
                    if row.kind == "snapshot":
                        self._snapshot_bytes += len(row.payload)
                if self._depth > self.max_rows:
                    self._evict(self._depth - self.max_rows)
                unsaved, self._unsaved = self._unsaved, {}
                try:
                    for name, by in unsaved.items():
                        self._bump(name, by)
                except sqlite3.Error:
                    self._unsaved = unsaved
                    raise
        except sqlite3.Error:
            self._depth, self._snapshot_bytes = depth, snapshot_bytes
            for name, by in unsaved_before.items():  # the commit failed: those counts are not saved
                self._unsaved[name] = max(self._unsaved.get(name, 0), by)
            raise
        if self.reserve_bytes and not self._reserve.exists():
            self._make_reserve()
        return ids

    def _make_reserve(self) -> None:
        """(Re)create the reserve file when missing and the filesystem has ample room for it."""
        if not self.reserve_bytes or self._reserve.exists():
            return
        try:
            st = os.statvfs(self._reserve.parent)
            if st.f_bavail * st.f_frsize < 4 * self.reserve_bytes:
                return
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("outbox reserve %s not made: %s", self._reserve, exc.strerror)
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def _release_reserve(self) -> bool:
        try:
            self._reserve.unlink()
        except OSError:
            return False
        log.error("outbox: disk full, released the %s-byte reserve so that old rows can be deleted",
                  self.reserve_bytes)
        return True

    def _put_under_pressure(self, rows: Sequence[OutboxRow], exc: sqlite3.Error) -> list[int]:
        self._release_reserve()
        events = [r for r in rows if r.kind == "event"]
        dropped = len(rows) - len(events)
        if dropped:
            self._lose("evicted_snapshot", dropped)
        log.error("outbox write failed (%s): dropped %s snapshots of this batch; freeing space", exc, dropped)
        for free in (self._delete_snapshots, self._delete_oldest_events, self._delete_oldest_events):
            if not events:
                return []
            try:
                freed = free(max(len(events), 16))
            except sqlite3.Error as again:
                log.error("outbox could not free space: %s", again)
                break
            if not freed:
                continue
            try:
                return self._insert(events)
            except sqlite3.Error:
                continue
        for row in events:  # the database takes nothing: hold them in memory (bounded), published all the same
            if len(self._memory) >= self.memory_max:
                lost = self._memory.popleft()
                self._lose("evicted_event" if lost.kind == "event" else "evicted_snapshot", 1)
            self._memory.append(row)
        log.error("outbox database not writable: %s events held in memory (%s in all, limit %s)",
                  len(events), len(self._memory), self.memory_max)
        return [r.id for r in events]

    def _delete_snapshots(self, _n: int) -> int:
        """Every stored snapshot goes before any event does (their pages are reused for events)."""
        with self._db:
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                                           "WHERE kind = 'snapshot'").fetchone()
            if count:
                self._db.execute("DELETE FROM outbox WHERE kind = 'snapshot'")
        if count:
            self._depth -= count
            self._snapshot_bytes -= size
            self._lose("evicted_snapshot", count)
            log.error("outbox: deleted %s stored snapshots to make room for events", count)
        return int(count)

    def _delete_oldest_events(self, n: int) -> int:
        with self._db:
            rows = self._db.execute("SELECT id FROM outbox ORDER BY id LIMIT ?", (n,)).fetchall()
            if rows:
                self._db.execute("DELETE FROM outbox WHERE id <= ?", (rows[-1][0],))
        if rows:
            self._depth -= len(rows)
            self._lose("evicted_event", len(rows))
            log.error("outbox: evicted the %s oldest events to make room for new ones", len(rows))
        return len(rows)

    def _lose(self, name: str, by: int) -> None:
        """Count a loss now (memory); it reaches the database with the next successful write."""
        self._unsaved[name] = self._unsaved.get(name, 0) + by
        log.warning("outbox lost %s message(s) (%s)", by, name)

    def _flush_memory(self) -> None:
        """Move messages held in memory into the database, oldest first, while it accepts them."""
        while self._memory:
            row = self._memory[0]
            try:
                self._insert([row])
            except sqlite3.Error:
                return
            self._memory.popleft()
        if self._unsaved:
            try:
                self._insert([])
            except sqlite3.Error:
                return

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
        """The oldest undelivered rows with id > after_id, in commit order (memory-held ones included)."""
        with self._lock:
            self._flush_memory()
            rows = [OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in self._db.execute(
                "SELECT id, kind, topic, payload, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()]
            held = [r for r in self._memory if r.id > after_id]
        return sorted(rows + held, key=lambda r: r.id)[:limit]

    def ack(self, row_ids: Iterable[int]) -> int:
        """Delete delivered rows; returns how many were still there (evicted rows are skipped).

        A lost ack only means a duplicate after a power cut, so this commit need not be FULL.
        """
        ids = list(row_ids)
        if not ids:
            return 0
        with self._lock:
            wanted = set(ids)
            held = len(self._memory)
            self._memory = deque(r for r in self._memory if r.id not in wanted)
            from_memory = held - len(self._memory)
            try:
                return from_memory + self._ack_rows(ids)
            except sqlite3.Error as exc:  # a full disk must not stop delivery: the row is sent again later
                log.error("outbox ack failed (%s); %s rows may be delivered twice", exc, len(ids))
                return from_memory

    def _ack_rows(self, ids: list[int]) -> int:
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._db:
                marks = ",".join("?" * len(ids))
                snap = self._db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE kind = 'snapshot' "
                    f"AND id IN ({marks})", ids).fetchone()[0]
                deleted: int = self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids).rowcount
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        self._depth -= deleted
        self._snapshot_bytes -= snap
        return deleted

    # --- gauges -----------------------------------------------------------------------------

    def depth(self) -> int:
        """Undelivered messages (events and snapshots), in the database or held in memory."""
        with self._lock:
            return self._depth + len(self._memory)

    def held_in_memory(self) -> int:
        with self._lock:
            return len(self._memory)

    def evicted(self) -> int:
        """Events lost (evicted because the outbox was full, or the disk was), over the outbox's whole life."""
        return self._counter("evicted_event")

    def evicted_snapshots(self) -> int:
        return self._counter("evicted_snapshot")

    def _counter(self, name: str) -> int:
        with self._lock:
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error:
                row = None
            return (int(row[0]) if row else 0) + self._unsaved.get(name, 0)

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
