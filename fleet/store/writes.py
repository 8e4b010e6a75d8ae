"""The ingest writer's job: one `IngestBatch` of validated unit messages applied in one transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.commands import ConfigReportedPayload
from contract.models import ModelReportedPayload
from contract.mqtt import CommandResultPayload, EventPayload, HeartbeatPayload, StatusPayload
from fleet.store.clips import ClipOutcome, ClipPart, ClipWrites
from fleet.store.engine import Cursor, Row


def local_day(ts: float, tz: dt.tzinfo) -> str:
    """The calendar day (YYYY-MM-DD) that the instant `ts` falls on in the zone `tz`."""
    return dt.datetime.fromtimestamp(ts, tz).date().isoformat()


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
    clip_parts: list[ClipPart] = field(default_factory=list)
    # unit_id, `model/reported` (the outcome of a model rollout), received_at
    model_reports: list[tuple[str, ModelReportedPayload, float]] = field(default_factory=list)
    # Filled by write_batch: snapshots no stored event refers to (yet), not written.
    orphan_snapshots: list[tuple[str, str, bytes, float]] = field(default_factory=list)
    # Filled by write_batch: what became of each clip the batch's parts belong to.
    clip_outcomes: list[ClipOutcome] = field(default_factory=list)

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

    def add_heartbeat(self, hb: HeartbeatPayload, received_at: float, count: bool = True) -> None:
        """The unit's latest beat; `count`: add it to the hourly roll-up too (False when the caller brings
        the roll-up of coalesced beats itself)."""
        current = self.heartbeats.get(hb.unit_id)
        if current is None or current[1] <= received_at:
            self.heartbeats[hb.unit_id] = (hb, received_at)
        if not count:
            return
        acc = self.rollup.setdefault((hb.unit_id, int(received_at // 3600)), [0, 0.0, 0.0, 0])
        acc[0] += 1
        acc[1] += hb.fps
        acc[2] = max(acc[2], hb.inference_p95_ms)
        acc[3] += 0 if hb.camera == "online" else 1

    def units_updated(self) -> dict[str, float]:
        """The units whose `units` row this batch updates (statuses, heartbeats, config reports), with the
        earliest time it names (a new row's first_seen). Events only add a missing unit's row."""
        seen: dict[str, float] = {}
        stamped = [(u, at) for u, (_, at) in self.statuses.items()]
        stamped += [(u, at) for u, (_, at) in self.heartbeats.items()]
        stamped += [(u, at) for u, (_, at) in self.config_reports.items()]
        for unit, at in stamped:
            if unit not in seen or at < seen[unit]:
                seen[unit] = at
        return seen

    def __len__(self) -> int:
        return (len(self.statuses) + len(self.heartbeats) + len(self.events) + len(self.snapshots)
                + len(self.cmd_results) + len(self.config_reports) + len(self.clip_parts) + len(self.model_reports))



@dataclass(frozen=True)
class Quarantined:
    """A message set aside: who sent it, what it was, why it was not stored, and when it arrived."""

    unit_id: str
    kind: str
    reason: str
    payload: str
    received_at: float


class IngestWrites(ClipWrites):
    """Writes of the MQTT ingest (one writer thread per server)."""

    def write_batch(self, batch: IngestBatch, unit_snapshot_quota: int | None = None,
                    unit_clip_quota: int | None = None) -> list[EventPayload]:
        """Apply one batch atomically; returns the events that were new (not duplicates). Snapshots that no
        stored event names are left out, in `batch.orphan_snapshots`; a unit's snapshots beyond
        `unit_snapshot_quota` bytes are deleted oldest first."""
        with self.transaction() as cur:
            # Scale-out: several writers (fleet servers on one shared subscription) touch the same units.
            # Every row lock is taken in unit-id order (here up front when several statements write
            # `units`; each statement's rows are sorted too), so two batches wait, never deadlock.
            # Only rows the batch updates are locked: an event batch does not wait for a heartbeat flush of
            # the same units on another server (events only insert a missing unit, which locks no other row).
            if len(batch) != len(batch.heartbeats):
                self.lock_units(cur, batch.units_updated())
            # Heartbeats first, then only statuses newer than the unit's heartbeat in this batch:
            # an LWT `offline` after the last beat must win, an old `offline` must not. Across batches
            # (and servers) the same rule is in the SQL: a state is only replaced by a later one.
            self._write_heartbeats(cur, batch)
            self._write_shadow_models(cur, batch)
            self._write_statuses(cur, batch)
            new_events = self._write_events(cur, batch)
            self._write_snapshots(cur, batch, unit_snapshot_quota)
            batch.clip_outcomes = self._write_clip_parts(cur, batch.clip_parts, unit_clip_quota)
            # A unit may only answer commands that were sent to it.
            self._xmany(cur, "UPDATE commands SET result_ok = ?, result_detail = ?, result_at = ? "
                             "WHERE command_id = ? AND unit_id = ?",
                        sorted((int(r.ok), r.detail, at, r.command_id, unit) for unit, r, at in batch.cmd_results))
            self._write_config_reports(cur, batch)
            self._write_model_reports(cur, batch)
        return new_events

    def _write_model_reports(self, cur: Cursor, batch: IngestBatch) -> None:
        """A unit's `model/reported` settles its open rollout row of that model and stage (sent, receiving, or
        no_answer: the rollout command stopped waiting before the unit answered). Only a report made after the
        rollout began counts (60 s of clock difference allowed): a retained old report settles nothing."""
        rows = []
        for unit, r, at in sorted(batch.model_reports, key=lambda x: (x[0], x[1].ts)):
            if not r.model_id or r.stage is None:
                continue  # the start-up announcement: what runs, not the answer to a rollout
            rows.append(("ok" if r.ok else "failed", r.detail[:512], r.active, r.shadow, at, unit, r.model_id,
                         r.stage, r.ts + 60))
        self._xmany(cur, "UPDATE rollouts SET state = ?, detail = ?, active_model = ?, shadow_model = ?, "
                         "updated_at = ? WHERE unit_id = ? AND model_id = ? AND stage = ? "
                         "AND state IN ('sent', 'receiving', 'no_answer') AND created_at <= ?", rows)

    def _write_snapshots(self, cur: Cursor, batch: IngestBatch, quota: int | None) -> None:
        """Only snapshots an event of the same unit names (or a `snapshot` command sent to it) are kept; events
        are written first, so those of this batch count. Then the unit's oldest go until it is within its quota."""
        batch.orphan_snapshots = []
        if not batch.snapshots:
            return
        # One query per 500 snapshot ids for the whole batch (not one per unit: at 100 alerts/s those round
        # trips were the writer's bottleneck): an event's snapshot, or the answer to a `snapshot` command.
        ids = sorted({snap for _, snap, _, _ in batch.snapshots})
        known: set[tuple[str, str]] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            known.update((r[0], r[1]) for r in self._x(
                cur, f"SELECT unit_id, snapshot_id FROM events WHERE snapshot_id IN ({marks}) "
                     f"UNION SELECT unit_id, command_id FROM commands WHERE name = 'snapshot' "
                     f"AND command_id IN ({marks})", [*chunk, *chunk]).fetchall())
        rows = []
        for item in sorted(batch.snapshots, key=lambda s: (s[0], s[1])):
            unit, snap, data, at = item
            if (unit, snap) in known:  # the same unit's event: a snapshot id names no other unit's image
                rows.append((unit, snap, at, data, len(data)))
            else:
                batch.orphan_snapshots.append(item)
        self._insert_rows(cur, "INSERT INTO snapshots (unit_id, snapshot_id, received_at, data, size_bytes)",
                          "(?, ?, ?, ?, ?)", "ON CONFLICT (unit_id, snapshot_id) DO NOTHING", rows,
                          "text, text, float8, bytea, int8")
        if quota is None or not rows:
            return
        # Only units over their quota are trimmed: one SUM per batch finds them.
        units = sorted({r[0] for r in rows})
        over = []
        for i in range(0, len(units), 500):
            chunk = units[i:i + 500]
            over += [r[0] for r in self._x(
                cur, f"SELECT unit_id, COALESCE(SUM(size_bytes), 0) FROM snapshots WHERE unit_id IN "
                     f"({','.join('?' * len(chunk))}) GROUP BY unit_id", chunk).fetchall() if int(r[1]) > quota]
        for unit in sorted(over):
            self._trim(cur, "unit_id = ?", [unit], quota)

    def _trim(self, cur: Cursor, where: str, params: list[Any], max_bytes: int) -> int:
        """Delete the oldest snapshots matching `where` until they total at most `max_bytes`; returns how many."""
        sizes = self._x(cur, f"SELECT unit_id, snapshot_id, size_bytes FROM snapshots WHERE {where} "
                             "ORDER BY received_at DESC, snapshot_id DESC", params).fetchall()
        total, doomed = 0, []
        for unit, snap, size in sizes:
            total += int(size or 0)
            if total > max_bytes:
                doomed.append((unit, snap))
        self._xmany(cur, "DELETE FROM snapshots WHERE unit_id = ? AND snapshot_id = ?", doomed)
        return len(doomed)

    def prune_snapshots(self, older_than: float, max_total_bytes: int) -> int:
        """Retention: drop snapshots received before `older_than`, then the oldest beyond `max_total_bytes`."""
        with self.transaction() as cur:
            aged = self._x(cur, "DELETE FROM snapshots WHERE received_at < ?", (older_than,)).rowcount
            return max(0, aged) + self._trim(cur, "1 = 1", [], max_total_bytes)

    def snapshot_bytes(self, unit_id: str | None = None) -> int:
        where, params = ("unit_id = ?", [unit_id]) if unit_id else ("1 = 1", [])
        with self.transaction() as cur:
            row = self._x(cur, f"SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots WHERE {where}", params).fetchone()
        return int(row[0])

    # -- quarantine ---------------------------------------------------------------------------
    def quarantine(self, items: Sequence[Quarantined], per_unit_cap: int = 1000) -> int:
        """Keep messages that could not be stored, with their reason; a message seen again counts up. A unit
        with `per_unit_cap` rows gets no new ones (returns how many were stored or counted)."""
        kept = 0
        with self.transaction() as cur:
            for q in items:
                key = hashlib.sha256(f"{q.unit_id}\0{q.kind}\0{q.payload}".encode()).hexdigest()
                seen = self._x(cur, "UPDATE quarantine SET times_seen = times_seen + 1, last_seen_at = ? "
                                    "WHERE quarantine_id = ?", (q.received_at, key)).rowcount
                if seen:
                    kept += 1
                    continue
                n = self._x(cur, "SELECT COUNT(*) FROM quarantine WHERE unit_id = ?", (q.unit_id,)).fetchone()[0]
                if int(n) >= per_unit_cap:
                    continue
                self._x(cur, "INSERT INTO quarantine (quarantine_id, unit_id, kind, reason, payload, received_at, "
                             "last_seen_at, times_seen) VALUES (?, ?, ?, ?, ?, ?, ?, 1) "
                             "ON CONFLICT (quarantine_id) DO NOTHING",
                        (key, q.unit_id, q.kind, q.reason[:1000], q.payload, q.received_at, q.received_at))
                kept += 1
        return kept

    def list_quarantine(self, limit: int = 100) -> list[Row]:
        with self.transaction() as cur:
            return self._rows(self._x(cur, "SELECT * FROM quarantine ORDER BY last_seen_at DESC LIMIT ?",
                                      (max(1, min(limit, 1000)),)))

    def _write_config_reports(self, cur: Cursor, batch: IngestBatch) -> None:
        rows = sorted((unit, at, int(r.ok), r.version, r.detail, json.dumps(r.config) if r.config else None, r.ts, at)
                      for unit, (r, at) in batch.config_reports.items())
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

    def _write_statuses(self, cur: Cursor, batch: IngestBatch) -> None:
        rows = sorted((unit, s.state, at, at, at, s.software, s.model_id, s.site, s.building, s.elevator)
                      for unit, (s, at) in batch.statuses.items()
                      if unit not in batch.heartbeats or batch.heartbeats[unit][1] <= at)
        # A status older than the unit's current state (another server wrote a later one) changes nothing.
        self._insert_rows(cur, """
            INSERT INTO units (unit_id, state, state_at, last_seen, first_seen, software, model_id,
                               site, building, elevator)""", "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", """
            ON CONFLICT (unit_id) DO UPDATE SET
                state = excluded.state, state_at = excluded.state_at,
                last_seen = CASE WHEN units.last_seen > excluded.last_seen THEN units.last_seen
                                 ELSE excluded.last_seen END,
                software = COALESCE(excluded.software, units.software),
                model_id = COALESCE(excluded.model_id, units.model_id),
                site = COALESCE(excluded.site, units.site),
                building = COALESCE(excluded.building, units.building),
                elevator = COALESCE(excluded.elevator, units.elevator)
            WHERE units.state_at IS NULL OR units.state_at <= excluded.state_at""", rows,
                          "text, text, float8, float8, float8, text, text, text, text, text")

    def _write_shadow_models(self, cur: Cursor, batch: IngestBatch) -> None:
        """The shadow model each heartbeat names (none = no shadow running) and its run/skip counts (issue 17's
        models per unit), and the unit's event clips uploaded and lost."""
        self._xmany(cur, "UPDATE units SET shadow_model_id = ?, shadow_runs = ?, shadow_skipped_budget = ?, "
                         "clips_uploaded = ?, clips_lost = ? WHERE unit_id = ?",
                    sorted(((hb.shadow_model_id, hb.shadow_runs, hb.shadow_skipped_budget, hb.clips_uploaded,
                             hb.clips_lost, unit) for unit, (hb, _at) in batch.heartbeats.items()),
                           key=lambda r: r[5]))

    def _write_heartbeats(self, cur: Cursor, batch: IngestBatch) -> None:
        # A heartbeat proves the unit runs, so it also says `online` (a lost retained status must
        # not leave a working unit marked offline).
        rows = sorted((unit, at, at, at, at, hb.software, hb.model_id, hb.camera, hb.relay, int(hb.blocking_enabled),
                       hb.fps, hb.inference_p95_ms, hb.outbox_depth, hb.site, hb.building, hb.elevator)
                      for unit, (hb, at) in batch.heartbeats.items())
        # Coalesced beats reach the database seconds late, and another server may hold newer ones: a beat
        # only says `online` over a state set before it, and only a newer beat replaces the unit's figures.
        self._insert_rows(cur, """
            INSERT INTO units (unit_id, state, state_at, last_seen, last_heartbeat, first_seen, software, model_id,
                               camera, relay, blocking_enabled, fps, inference_p95_ms, outbox_depth,
                               site, building, elevator)""",
                          "(?, 'online', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", """
            ON CONFLICT (unit_id) DO UPDATE SET
                state = CASE WHEN units.state_at IS NULL OR units.state_at < excluded.state_at THEN 'online'
                             ELSE units.state END,
                state_at = CASE WHEN units.state_at IS NULL OR units.state_at < excluded.state_at
                                THEN excluded.state_at ELSE units.state_at END,
                last_seen = CASE WHEN units.last_seen > excluded.last_seen THEN units.last_seen
                                 ELSE excluded.last_seen END,
                last_heartbeat = excluded.last_heartbeat, software = excluded.software,
                model_id = excluded.model_id, camera = excluded.camera, relay = excluded.relay,
                blocking_enabled = excluded.blocking_enabled, fps = excluded.fps,
                inference_p95_ms = excluded.inference_p95_ms, outbox_depth = excluded.outbox_depth,
                site = COALESCE(excluded.site, units.site),
                building = COALESCE(excluded.building, units.building),
                elevator = COALESCE(excluded.elevator, units.elevator)
            WHERE units.last_heartbeat IS NULL OR units.last_heartbeat <= excluded.last_heartbeat""", rows,
                          "text, float8, float8, float8, float8, text, text, text, text, int4, float8, float8, int8, "
                          "text, text, text")
        self._insert_rows(cur, """
            INSERT INTO heartbeat_hours (unit_id, hour, beats, fps_sum, inference_p95_max, camera_bad)""",
                          "(?, ?, ?, ?, ?, ?)", """
            ON CONFLICT (unit_id, hour) DO UPDATE SET
                beats = heartbeat_hours.beats + excluded.beats,
                fps_sum = heartbeat_hours.fps_sum + excluded.fps_sum,
                inference_p95_max = CASE WHEN excluded.inference_p95_max > heartbeat_hours.inference_p95_max
                                         THEN excluded.inference_p95_max ELSE heartbeat_hours.inference_p95_max END,
                camera_bad = heartbeat_hours.camera_bad + excluded.camera_bad""",
                          sorted((u, h, int(a[0]), a[1], a[2], int(a[3])) for (u, h), a in batch.rollup.items()),
                          "text, int8, int4, float8, float8, int4")

    def _write_events(self, cur: Cursor, batch: IngestBatch) -> list[EventPayload]:
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
        rows.sort(key=lambda r: (r[2], r[0]))
        self._insert_rows(cur, """
            INSERT INTO events (event_id, incident_id, unit_id, type, phase, ts, day, received_at, cls,
                                confidence, hold_s, snapshot_id, detail, payload)""",
                          "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", "ON CONFLICT (event_id) DO NOTHING", rows,
                          "text, text, text, text, text, float8, text, float8, text, float8, float8, text, text, text")
        # Units that only ever sent events still belong on the dashboard. An existing row is left alone (no
        # lock taken, so an alert never waits behind another server's heartbeat flush): `last_seen` is the
        # heartbeats' and statuses' to move, and silence means no heartbeat.
        first: dict[str, float] = {}
        for e, at, _ in batch.events:
            first[e.unit_id] = min(at, first.get(e.unit_id, at))
        self._insert_rows(cur, "INSERT INTO units (unit_id, first_seen, last_seen)", "(?, ?, ?)",
                          "ON CONFLICT (unit_id) DO NOTHING",
                          [(u, first[u], first[u]) for u in sorted(first)], "text, float8, float8")
        # Alarm lifecycle: an incident's `end` clears its alert (the hold ended), whichever arrived first.
        self._xmany(cur, """
            UPDATE events SET cleared_at = (SELECT MIN(x.ts) FROM events x WHERE x.incident_id = events.incident_id
                                            AND x.phase = 'end' AND x.unit_id = events.unit_id)
            WHERE incident_id = ? AND phase = 'start' AND unit_id = ? AND cleared_at IS NULL""",
                    sorted({(e.incident_id, e.unit_id) for e in new if e.phase in ("start", "end")}))
        return new
