"""The dashboard's reads (units, alerts, snapshots, daily counts, the labelled dataset) and the few writes
a person makes there (verdicts, commands)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from fleet.alerts import ALERT_TYPES, EBIKE_TYPES, VERDICTS
from fleet.errors import StoreError
from fleet.store.engine import Engine, Row


def day_bounds(day: dt.date, tz: dt.tzinfo) -> tuple[float, float]:
    """[start, end) of a calendar day in `tz` as timestamps; 23 or 25 h long on a DST change."""
    start = dt.datetime.combine(day, dt.time(), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    return start.timestamp(), end.timestamp()


class DashboardQueries(Engine):
    """What the API and the pages read and label."""

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
               l.verdict, l.username AS labelled_by, l.labelled_at, e.acknowledged_by, e.acknowledged_at,
               e.cleared_by, e.cleared_at, e.escalated_at,
               (SELECT 1 FROM snapshots s WHERE s.unit_id = e.unit_id AND s.snapshot_id = e.snapshot_id)
                   AS has_snapshot,
               (SELECT COUNT(*) FROM clips c WHERE c.event_id = e.event_id) AS clips
        FROM events e
        LEFT JOIN units u ON u.unit_id = e.unit_id
        LEFT JOIN labels l ON l.event_id = e.event_id"""
    # Filters and limit first, then the per-alert subqueries for the rows picked only.
    _ALERT_PICK = """
        WITH picked AS (SELECT e.event_id FROM events e LEFT JOIN units u ON u.unit_id = e.unit_id
                        LEFT JOIN labels l ON l.event_id = e.event_id WHERE {where}
                        ORDER BY e.received_at DESC, e.event_id LIMIT ?)
        {select} WHERE e.event_id IN (SELECT event_id FROM picked) ORDER BY e.received_at DESC, e.event_id"""

    @staticmethod
    def _alert_filter(status: str) -> tuple[list[str], list[Any]]:
        where = [f"e.phase = 'start' AND e.type IN ({','.join('?' * len(ALERT_TYPES))})"]
        params: list[Any] = list(ALERT_TYPES)
        if status == "open":
            where.append("l.verdict IS NULL")
        elif status in VERDICTS:
            where.append("l.verdict = ?")
            params.append(status)
        return where, params

    def list_alerts(self, status: str = "open", q: str = "", unit_id: str = "", building: str = "",
                    type_: str = "", since: float | None = None, until: float | None = None,
                    received_after: float | None = None, limit: int = 100, site: str = "") -> list[Row]:
        where, params = self._alert_filter(status)
        if q:
            where.append("(LOWER(e.unit_id) LIKE ? OR LOWER(COALESCE(u.building, '')) LIKE ? "
                         "OR LOWER(COALESCE(u.site, '')) LIKE ? OR LOWER(COALESCE(e.cls, '')) LIKE ?)")
            params += [f"%{q.lower()}%"] * 4
        for column, value in (("e.unit_id", unit_id), ("u.site", site), ("u.building", building), ("e.type", type_)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        for clause, bound in (("e.ts >= ?", since), ("e.ts < ?", until), ("e.received_at > ?", received_after)):
            if bound is not None:
                where.append(clause)
                params.append(bound)
        params.append(max(1, min(limit, 1000)))
        return self.query(self._ALERT_PICK.format(where=" AND ".join(where), select=self._ALERT_SELECT), params)

    def get_alert(self, event_id: str) -> Row | None:
        rows = self.query(f"{self._ALERT_SELECT} WHERE e.event_id = ?", (event_id,))
        return rows[0] if rows else None

    def get_snapshot(self, unit_id: str, snapshot_id: str) -> bytes | None:
        rows = self.query("SELECT data FROM snapshots WHERE unit_id = ? AND snapshot_id = ?", (unit_id, snapshot_id))
        return bytes(rows[0]["data"]) if rows else None

    def alert_counts(self) -> dict[str, int]:
        """Server-side counts for the header: `open` (no verdict yet, i.e. unacknowledged) and `active` (hold
        not ended, not cleared by a person) — over every alert, not the cards a page happens to hold."""
        marks = ",".join("?" * len(ALERT_TYPES))
        row = self.query(f"""
            SELECT (SELECT COUNT(*) FROM events WHERE acknowledged_at IS NULL AND phase = 'start'
                    AND type IN ({marks})) AS open,
                   (SELECT COUNT(*) FROM events WHERE cleared_at IS NULL AND phase = 'start'
                    AND type IN ({marks})) AS active""", [*ALERT_TYPES, *ALERT_TYPES])[0]
        return {"open": int(row["open"]), "active": int(row["active"])}

    def set_label(self, event_id: str, verdict: str, username: str, now: float | None = None) -> None:
        """A verdict labels the alert and, the first time, acknowledges it (who and when)."""
        if verdict not in VERDICTS:
            raise StoreError(f"unknown verdict {verdict!r}")
        at = time.time() if now is None else now
        with self.transaction() as cur:
            self._x(cur, "INSERT INTO labels (event_id, verdict, username, labelled_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (event_id) DO UPDATE SET verdict = excluded.verdict, "
                         "username = excluded.username, labelled_at = excluded.labelled_at",
                    (event_id, verdict, username, at))
            self._x(cur, "UPDATE events SET acknowledged_by = ?, acknowledged_at = ? "
                         "WHERE event_id = ? AND acknowledged_at IS NULL", (username, at, event_id))

    def clear_label(self, event_id: str) -> None:
        """Undo a verdict: the alert is open and unacknowledged again."""
        with self.transaction() as cur:
            self._x(cur, "DELETE FROM labels WHERE event_id = ?", (event_id,))
            self._x(cur, "UPDATE events SET acknowledged_by = NULL, acknowledged_at = NULL WHERE event_id = ?",
                    (event_id,))

    def clear_alert(self, event_id: str, username: str, now: float | None = None) -> bool:
        """A person clears an alert whose hold has not ended (ThingsBoard's Clear); False if already cleared."""
        at = time.time() if now is None else now
        return self.execute("UPDATE events SET cleared_by = ?, cleared_at = ? WHERE event_id = ? "
                            "AND cleared_at IS NULL", (username, at, event_id)) > 0

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
            SELECT e.day, COALESCE(u.site, 'Unassigned') AS site, COALESCE(u.building, 'Unassigned') AS building,
                   COUNT(*) AS n
            FROM events e LEFT JOIN units u ON u.unit_id = e.unit_id
            WHERE e.phase = 'start' AND e.type IN ({marks}) AND e.day >= ? AND e.day <= ?
            GROUP BY e.day, COALESCE(u.site, 'Unassigned'), COALESCE(u.building, 'Unassigned') ORDER BY e.day""",
                          [*EBIKE_TYPES, first_day, last_day])

    def create_command(self, command_id: str, unit_id: str, name: str, username: str) -> None:
        self.execute("INSERT INTO commands (command_id, unit_id, name, requested_by, requested_at) "
                     "VALUES (?, ?, ?, ?, ?)", (command_id, unit_id, name, username, time.time()))

    def get_command(self, command_id: str) -> Row | None:
        rows = self.query("SELECT * FROM commands WHERE command_id = ?", (command_id,))
        return rows[0] if rows else None

    def unit_commands(self, unit_id: str, limit: int = 50) -> list[Row]:
        """The unit's command log, newest first."""
        return self.query("SELECT * FROM commands WHERE unit_id = ? ORDER BY requested_at DESC LIMIT ?",
                          (unit_id, max(1, min(limit, 1000))))

    def unit_health(self, unit_id: str, since: float) -> list[Row]:
        """Hourly heartbeat roll-ups of one unit since `since`, oldest first: beats, mean fps, worst
        inference p95, beats whose camera was not online."""
        return self.query("SELECT hour, beats, fps_sum, inference_p95_max, camera_bad FROM heartbeat_hours "
                          "WHERE unit_id = ? AND hour >= ? ORDER BY hour", (unit_id, int(since // 3600)))

    def count_events(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM events")[0]["n"])
