"""Event clips in the fleet database (issue 17; contract/clips.py): parts → checked clip → frames.

Parts are stored as they arrive (several fleet servers may each get some of one clip's chunks). The
transaction that stores the last part assembles the clip: size and sha256 must match, the zip must be
exactly a clip (contract.clips.read_clip) of this unit, and its incident must be a stored alert of this
unit. A complete clip whose alert is not stored yet stays in parts and is tried again by `settle_clips`
(the retention round) until `PARTS_MAX_AGE_S`; anything refused is deleted and reported with the reason.
Per unit, clips are kept within a quota (oldest first out), and retention removes them by age and total.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from contract.clips import MAX_CLIP_BYTES, read_clip
from contract.errors import PayloadError
from fleet.alerts import EBIKE_TYPES, ObjectClass
from fleet.errors import StoreError
from fleet.store.engine import Cursor, Engine, Row

# Parts of a clip that did not complete (or whose alert never came) are dropped after this long.
PARTS_MAX_AGE_S = 3600.0
# What one unit may have in unfinished parts at once: two clips' worth (more is a unit misbehaving).
UNIT_PARTS_MAX_BYTES = 2 * MAX_CLIP_BYTES
# A per-object correction: a training class, or "none" (not an object: the box is dropped from labels).
OBJECT_CLASSES: tuple[str, ...] = get_args(ObjectClass)


@dataclass(frozen=True)
class ClipPart:
    unit_id: str
    clip_id: str
    sha256: str
    index: int
    count: int
    data: bytes
    received_at: float


@dataclass(frozen=True)
class ClipOutcome:
    unit_id: str
    clip_id: str
    outcome: str  # stored | waiting | refused | over_parts_cap
    detail: str = ""


class ClipWrites(Engine):
    def _write_clip_parts(self, cur: Cursor, parts: Sequence[ClipPart], quota: int | None) -> list[ClipOutcome]:
        """Store the parts, then assemble every clip they complete. Returns what happened to each clip."""
        if not parts:
            return []
        outcomes: list[ClipOutcome] = []
        units = sorted({p.unit_id for p in parts})
        pending = {r[0]: int(r[1]) for r in self._x(
            cur, f"SELECT unit_id, COALESCE(SUM(size_bytes), 0) FROM clip_parts WHERE unit_id IN "
                 f"({','.join('?' * len(units))}) GROUP BY unit_id", units).fetchall()}
        rows = []
        for p in sorted(parts, key=lambda p: (p.unit_id, p.clip_id, p.index)):
            if pending.get(p.unit_id, 0) + len(p.data) > UNIT_PARTS_MAX_BYTES:
                outcomes.append(ClipOutcome(p.unit_id, p.clip_id, "over_parts_cap",
                                            f"unit has {pending.get(p.unit_id, 0)} bytes of unfinished clips"))
                continue
            pending[p.unit_id] = pending.get(p.unit_id, 0) + len(p.data)
            rows.append((p.unit_id, p.clip_id, p.sha256, p.index, p.count, p.received_at, len(p.data), p.data))
        self._insert_rows(cur, "INSERT INTO clip_parts (unit_id, clip_id, sha256, idx, count, received_at, "
                               "size_bytes, data)", "(?, ?, ?, ?, ?, ?, ?, ?)",
                          "ON CONFLICT (unit_id, clip_id, sha256, idx) DO NOTHING", rows,
                          "text, text, text, int4, int4, float8, int8, bytea")
        for unit, clip, sha in sorted({(p.unit_id, p.clip_id, p.sha256) for p in parts}):
            outcome = self._assemble(cur, unit, clip, sha)
            if outcome is not None:
                outcomes.append(outcome)
        if quota is not None:
            for unit in sorted({o.unit_id for o in outcomes if o.outcome == "stored"}):
                self._trim_clips(cur, "unit_id = ?", [unit], quota)
        return outcomes

    def _assemble(self, cur: Cursor, unit: str, clip: str, sha: str) -> ClipOutcome | None:
        have = self._x(cur, "SELECT COUNT(*), MIN(count), MAX(count) FROM clip_parts WHERE unit_id = ? "
                            "AND clip_id = ? AND sha256 = ?", (unit, clip, sha)).fetchone()
        n, low, high = int(have[0]), have[1], have[2]
        if n == 0 or n < int(high):
            return None  # more to come
        where = (unit, clip, sha)
        if low != high or n != high:
            self._x(cur, "DELETE FROM clip_parts WHERE unit_id = ? AND clip_id = ? AND sha256 = ?", where)
            return ClipOutcome(unit, clip, "refused", "its parts disagree on the chunk count")
        data = b"".join(bytes(r[0]) for r in self._x(
            cur, "SELECT data FROM clip_parts WHERE unit_id = ? AND clip_id = ? AND sha256 = ? ORDER BY idx",
            where).fetchall())
        try:
            if hashlib.sha256(data).hexdigest() != sha:
                raise PayloadError("sha256 of the assembled clip does not match")
            manifest, frames = read_clip(data)
            if manifest.clip_id != clip or manifest.unit_id != unit:
                raise PayloadError("clip.json names another clip or unit than its topic")
            if manifest.reason != "hold" or not manifest.incident_id:
                raise PayloadError("only clips of a hold (with its incident) are kept")
        except PayloadError as exc:
            self._x(cur, "DELETE FROM clip_parts WHERE unit_id = ? AND clip_id = ? AND sha256 = ?", where)
            return ClipOutcome(unit, clip, "refused", str(exc)[:300])
        marks = ",".join("?" * len(EBIKE_TYPES))
        alert = self._x(cur, f"SELECT event_id FROM events WHERE unit_id = ? AND incident_id = ? AND phase = 'start' "
                             f"AND type IN ({marks}) ORDER BY ts LIMIT 1",
                        (unit, manifest.incident_id, *EBIKE_TYPES)).fetchone()
        if alert is None:
            return ClipOutcome(unit, clip, "waiting", f"no stored alert of incident {manifest.incident_id} (yet)")
        received = self._x(cur, "SELECT MAX(received_at) FROM clip_parts WHERE unit_id = ? AND clip_id = ? "
                                "AND sha256 = ?", where).fetchone()[0]
        self._x(cur, "INSERT INTO clips (unit_id, clip_id, event_id, reason, received_at, size_bytes, frames, "
                     "manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (unit_id, clip_id) DO NOTHING",
                (unit, clip, alert[0], manifest.reason, float(received), len(data), len(frames),
                 manifest.model_dump_json()))
        self._insert_rows(cur, "INSERT INTO clip_frames (unit_id, clip_id, idx, data)", "(?, ?, ?, ?)",
                          "ON CONFLICT (unit_id, clip_id, idx) DO NOTHING",
                          [(unit, clip, i, jpeg) for i, jpeg in enumerate(frames)], "text, text, int4, bytea")
        self._x(cur, "DELETE FROM clip_parts WHERE unit_id = ? AND clip_id = ? AND sha256 = ?", where)
        return ClipOutcome(unit, clip, "stored", f"{len(frames)} frames, {len(data)} bytes")

    def _trim_clips(self, cur: Cursor, where: str, params: list[Any], max_bytes: int) -> int:
        """Delete the newest-last clips matching `where` beyond `max_bytes` (oldest go first)."""
        sizes = self._x(cur, f"SELECT unit_id, clip_id, size_bytes FROM clips WHERE {where} "
                             "ORDER BY received_at DESC, clip_id DESC", params).fetchall()
        total, doomed = 0, []
        for unit, clip, size in sizes:
            total += int(size or 0)
            if total > max_bytes:
                doomed.append((unit, clip))
        self._delete_clips(cur, doomed)
        return len(doomed)

    def _delete_clips(self, cur: Cursor, keys: Sequence[tuple[str, str]]) -> None:
        self._xmany(cur, "DELETE FROM clip_frames WHERE unit_id = ? AND clip_id = ?", keys)
        self._xmany(cur, "DELETE FROM clips WHERE unit_id = ? AND clip_id = ?", keys)

    def settle_clips(self, now: float, quota: int | None = None) -> list[ClipOutcome]:
        """The retention round's part: complete clips whose alert has arrived since are stored; parts older
        than PARTS_MAX_AGE_S are dropped (reported as `expired`)."""
        outcomes: list[ClipOutcome] = []
        with self.transaction() as cur:
            groups = self._x(cur, "SELECT unit_id, clip_id, sha256, COUNT(*), MAX(count), MIN(received_at) "
                                  "FROM clip_parts GROUP BY unit_id, clip_id, sha256 "
                                  "ORDER BY unit_id, clip_id, sha256").fetchall()
            for unit, clip, sha, n, count, first in groups:
                if int(n) >= int(count):
                    outcome = self._assemble(cur, unit, clip, sha)
                    if outcome is not None and outcome.outcome != "waiting":
                        outcomes.append(outcome)
                        if outcome.outcome == "stored" and quota is not None:
                            self._trim_clips(cur, "unit_id = ?", [unit], quota)
                        continue
                if now - float(first) > PARTS_MAX_AGE_S:
                    self._x(cur, "DELETE FROM clip_parts WHERE unit_id = ? AND clip_id = ? AND sha256 = ?",
                            (unit, clip, sha))
                    outcomes.append(ClipOutcome(unit, clip, "expired", f"{n} of {count} parts, no alert or no end"))
        return outcomes

    def prune_clips(self, older_than: float, max_total_bytes: int) -> int:
        """Retention: clips received before `older_than`, then the oldest beyond `max_total_bytes`."""
        with self.transaction() as cur:
            aged = [(str(r[0]), str(r[1])) for r in self._x(
                cur, "SELECT unit_id, clip_id FROM clips WHERE received_at < ?", (older_than,)).fetchall()]
            self._delete_clips(cur, aged)
            return len(aged) + self._trim_clips(cur, "1 = 1", [], max_total_bytes)

    def clip_bytes(self, unit_id: str | None = None) -> int:
        where, params = ("unit_id = ?", [unit_id]) if unit_id else ("1 = 1", [])
        return int(self.query(f"SELECT COALESCE(SUM(size_bytes), 0) AS n FROM clips WHERE {where}", params)[0]["n"])

    # -- reads for the alert page ---------------------------------------------------------------
    def clip_of_alert(self, event_id: str) -> Row | None:
        """The alert's clip: unit_id, clip_id, frames, reason and the manifest (parsed)."""
        rows = self.query("SELECT unit_id, clip_id, reason, frames, size_bytes, received_at, manifest FROM clips "
                          "WHERE event_id = ? ORDER BY received_at LIMIT 1", (event_id,))
        if not rows:
            return None
        row = rows[0]
        row["manifest"] = json.loads(row["manifest"])
        return row

    def clip_frame(self, unit_id: str, clip_id: str, idx: int) -> bytes | None:
        rows = self.query("SELECT data FROM clip_frames WHERE unit_id = ? AND clip_id = ? AND idx = ?",
                          (unit_id, clip_id, idx))
        return bytes(rows[0]["data"]) if rows else None

    # -- per-object corrections -----------------------------------------------------------------
    def set_object_labels(self, event_id: str, frame_idx: int, corrections: dict[int, str], username: str,
                          now: float) -> list[Row]:
        """Correct the class of objects on frame `frame_idx` of the alert's clip (`none`: not an object);
        refuses an unknown class, frame or object. Returns the alert's corrections."""
        clip = self.clip_of_alert(event_id)
        if clip is None:
            raise StoreError("this alert has no clip: there are no objects to correct")
        frames = clip["manifest"]["frames"]
        if not 0 <= frame_idx < len(frames):
            raise StoreError(f"the clip has no frame {frame_idx}")
        seen = frames[frame_idx]["detections"]
        with self.transaction() as cur:
            for idx, cls in sorted(corrections.items()):
                if cls not in OBJECT_CLASSES:
                    raise StoreError(f"unknown class {cls!r} (one of {', '.join(OBJECT_CLASSES)})")
                if not 0 <= idx < len(seen):
                    raise StoreError(f"frame {frame_idx} has no object {idx}")
                self._x(cur, "INSERT INTO object_labels (event_id, frame_idx, object_idx, seen_cls, cls, username, "
                             "labelled_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, frame_idx, object_idx) "
                             "DO UPDATE SET cls = excluded.cls, username = excluded.username, "
                             "labelled_at = excluded.labelled_at",
                        (event_id, frame_idx, idx, seen[idx]["cls"], cls, username, now))
        return self.object_labels(event_id)

    def object_labels(self, event_id: str) -> list[Row]:
        return self.query("SELECT frame_idx, object_idx, seen_cls, cls, username, labelled_at FROM object_labels "
                          "WHERE event_id = ? ORDER BY frame_idx, object_idx", (event_id,))
