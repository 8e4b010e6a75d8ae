"""The model registry's tables (migration 0006): model files and per-unit rollout rows."""

from __future__ import annotations

import json
import time
from typing import Any

from contract.onnx_header import ModelFile
from fleet.errors import StoreError
from fleet.store.engine import Engine, Row

ROLLOUT_STATES = ("sent", "receiving", "ok", "failed", "no_answer")


class ModelRegistry(Engine):
    def add_model(self, checked: ModelFile, data: bytes, added_by: str | None = None) -> bool:
        """Register a checked model; False if this exact file is already there. A model id that is
        already registered for different bytes is refused: ids name one file, forever."""
        meta = checked.meta
        with self.transaction() as cur:
            rows = self._rows(self._x(cur, "SELECT model_id, sha256 FROM models WHERE model_id = ? OR sha256 = ?",
                                      (meta.model_id, checked.sha256)))
            for row in rows:
                if row["model_id"] == meta.model_id and row["sha256"] == checked.sha256:
                    return False
                if row["model_id"] == meta.model_id:
                    raise StoreError(f"model id {meta.model_id} is already registered for another file "
                                     f"(sha256 {row['sha256'][:12]}); give the new model its own id")
                raise StoreError(f"this file is already registered as {row['model_id']}")
            self._x(cur, "INSERT INTO models (model_id, sha256, size_bytes, version, classes, metadata, added_at, "
                         "added_by, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (meta.model_id, checked.sha256, checked.size, meta.version, json.dumps(list(meta.classes)),
                     json.dumps(checked.props, sort_keys=True), time.time(), added_by, data))
        return True

    def list_models(self) -> list[Row]:
        return self.query(
            "SELECT m.model_id, m.sha256, m.size_bytes, m.version, m.classes, m.added_at, "
            "(SELECT COUNT(*) FROM rollouts r WHERE r.model_id = m.model_id AND r.state = 'ok' "
            " AND r.stage = 'active') AS active_units, "
            "(SELECT COUNT(*) FROM rollouts r WHERE r.model_id = m.model_id AND r.state = 'ok' "
            " AND r.stage = 'shadow') AS shadow_units "
            "FROM models m ORDER BY m.added_at, m.model_id")

    def get_model(self, model_id: str) -> Row | None:
        rows = self.query("SELECT * FROM models WHERE model_id = ?", (model_id,))
        if not rows:
            return None
        row = rows[0]
        row["data"] = bytes(row["data"])
        return row

    def units_for(self, site: str | None = None, units: list[str] | None = None) -> list[str]:
        if units:
            found = {r["unit_id"] for r in self.query(
                f"SELECT unit_id FROM units WHERE unit_id IN ({', '.join('?' * len(units))})", units)}
            missing = sorted(set(units) - found)
            if missing:
                raise StoreError(f"unknown units: {', '.join(missing)[:300]}")
            return list(dict.fromkeys(units))
        return [r["unit_id"] for r in self.query("SELECT unit_id FROM units WHERE site = ? ORDER BY unit_id",
                                                 (site,))]

    def record_rollout(self, rollout_id: str, model_id: str, unit_id: str, stage: str, state: str,
                       detail: str = "", active: str | None = None, shadow: str | None = None) -> None:
        if state not in ROLLOUT_STATES:
            raise StoreError(f"unknown rollout state {state!r}")
        now = time.time()
        self.execute("INSERT INTO rollouts (rollout_id, model_id, unit_id, stage, state, detail, active_model, "
                     "shadow_model, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                     "ON CONFLICT (rollout_id, unit_id) DO UPDATE SET state = excluded.state, "
                     "detail = excluded.detail, active_model = excluded.active_model, "
                     "shadow_model = excluded.shadow_model, updated_at = excluded.updated_at "
                     # An outcome (ok/failed, also from ingest's model/reported) is never undone by a
                     # later in-between state of the rollout command.
                     "WHERE rollouts.state NOT IN ('ok', 'failed') OR excluded.state IN ('ok', 'failed')",
                     (rollout_id, model_id, unit_id, stage, state, detail[:512], active, shadow, now, now))

    def rollout_rows(self, rollout_id: str | None = None) -> list[Row]:
        where, params = ("WHERE rollout_id = ?", [rollout_id]) if rollout_id else ("", [])
        return self.query(f"SELECT * FROM rollouts {where} ORDER BY created_at, unit_id", params)

    def shadow_agreement(self, since: float = 0.0) -> list[Row]:
        """Per unit and shadow model: its would-be holds, how many the active model's relay agreed with, how
        many fall within 10 s of an alert a manager confirmed (would have blocked it too) or called a false
        alarm, and `missed_confirmed`: confirmed alerts of the unit, from the model's first shadow event on,
        with no would-be hold of it within 10 s (the candidate would have let that e-bike in)."""
        rows = self.query("SELECT unit_id, ts, payload FROM events WHERE type = 'shadow_decision' AND phase = 'start' "
                          "AND ts >= ? ORDER BY ts", (since,))
        verdicts = self.query(
            "SELECT e.unit_id, e.ts, l.verdict FROM labels l JOIN events e ON e.event_id = l.event_id "
            "WHERE e.phase = 'start' AND e.ts >= ? AND l.verdict IN ('confirmed', 'false_alarm')", (since - 10,))
        out: dict[tuple[str, str], dict[str, Any]] = {}
        holds: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            try:
                p = json.loads(r["payload"])
            except ValueError:
                continue
            key = (r["unit_id"], str(p.get("model_id") or "?"))
            row = out.setdefault(key, {"unit_id": key[0], "model_id": key[1], "would_hold": 0, "agreed": 0,
                                       "on_confirmed": 0, "on_false_alarm": 0, "missed_confirmed": 0,
                                       "first_ts": float(r["ts"])})
            if p.get("would") != "hold":
                continue
            holds.setdefault(key, []).append(float(r["ts"]))
            row["would_hold"] += 1
            row["agreed"] += bool(p.get("agrees"))
            near = [v["verdict"] for v in verdicts if v["unit_id"] == r["unit_id"] and abs(v["ts"] - r["ts"]) <= 10]
            row["on_confirmed"] += "confirmed" in near
            row["on_false_alarm"] += "false_alarm" in near and "confirmed" not in near
        for key, row in out.items():
            mine = holds.get(key, [])
            row["missed_confirmed"] = sum(
                1 for v in verdicts if v["unit_id"] == key[0] and v["verdict"] == "confirmed"
                and v["ts"] >= row["first_ts"] - 10 and not any(abs(v["ts"] - t) <= 10 for t in mine))
            del row["first_ts"]
        return list(out.values())

    def model_overview(self, since: float = 0.0) -> dict[str, Any]:
        """What the Models page shows: the registry, each unit's models (heartbeats) with its shadow's run and
        skip counts, each rollout's progress (units per state), and shadow agreement per unit and per model."""
        agreement = self.shadow_agreement(since)
        per_model: dict[str, dict[str, Any]] = {}
        for row in agreement:
            total = per_model.setdefault(row["model_id"], {"model_id": row["model_id"], "units": 0, "would_hold": 0,
                                                           "agreed": 0, "on_confirmed": 0, "on_false_alarm": 0,
                                                           "missed_confirmed": 0})
            total["units"] += 1
            for k in ("would_hold", "agreed", "on_confirmed", "on_false_alarm", "missed_confirmed"):
                total[k] += row[k]
        rollouts: dict[str, dict[str, Any]] = {}
        for r in self.rollout_rows():
            ro = rollouts.setdefault(r["rollout_id"], {"rollout_id": r["rollout_id"], "model_id": r["model_id"],
                                                       "stage": r["stage"], "created_at": r["created_at"],
                                                       "updated_at": r["updated_at"], "units": 0,
                                                       **{state: 0 for state in ROLLOUT_STATES}})
            ro["units"] += 1
            ro[r["state"]] += 1
            ro["updated_at"] = max(ro["updated_at"], r["updated_at"])
        units = self.query("SELECT unit_id, site, model_id, shadow_model_id, shadow_runs, shadow_skipped_budget "
                           "FROM units ORDER BY site, unit_id")
        last = {u["unit_id"]: u["last_rollout"] for u in self.unit_models()}
        for u in units:
            u["last_rollout"] = last.get(u["unit_id"])
        return {"models": self.list_models(), "units": units,
                "rollouts": sorted(rollouts.values(), key=lambda r: r["created_at"], reverse=True),
                "agreement": sorted(agreement, key=lambda r: (r["model_id"], r["unit_id"])),
                "agreement_by_model": sorted(per_model.values(), key=lambda r: r["model_id"])}

    def unit_models(self) -> list[Row]:
        """Per unit: the active and shadow model its heartbeats name, and its latest rollout."""
        rows: dict[str, dict[str, Any]] = {}
        for r in self.query("SELECT unit_id, model_id, shadow_model_id FROM units ORDER BY unit_id"):
            rows[r["unit_id"]] = {"unit_id": r["unit_id"], "active": r["model_id"], "shadow": r["shadow_model_id"],
                                  "last_rollout": None}
        for r in self.query("SELECT * FROM rollouts ORDER BY updated_at"):
            if r["unit_id"] in rows:
                rows[r["unit_id"]]["last_rollout"] = f"{r['model_id']} {r['stage']}: {r['state']}"
        return list(rows.values())
