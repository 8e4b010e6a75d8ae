"""`liftguard-fleet dataset export`: the managers' verdicts as a labelled image set (issue 17).

    liftguard-fleet dataset export --out DIR [--since 2026-11-01] [--site "Harbour View"]

Writes
    DIR/images/<event>.jpg   the alert's picture as the unit sent it
    DIR/truth.csv            image,expected  (confirmed → block, false_alarm → allow)
    DIR/manifest.csv         image, event_id, unit_id, site, time (UTC ISO), verdict, labelled_by,
                             deciding_model, confidence
    DIR/manifest.json        what was asked, how many were written and why others were left out

`liftguard eval --model M --images DIR/images --truth DIR/truth.csv --out R` scores any model on it:
how often it would have blocked what managers confirmed and passed what they called a false alarm.

Only `confirmed` and `false_alarm` are labels; `acknowledged` says nothing about what was in the car.
The pictures are the alert snapshots: anonymised on the unit and annotated with the unit's own boxes
and captions. They are right for scoring decisions at this site (the same picture the manager judged);
for training, raw frames (event clips) are needed, which the units do not send yet.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ConfigError
from fleet.alerts import EBIKE_TYPES
from fleet.store import Store

LABEL_VERDICTS = {"confirmed": "block", "false_alarm": "allow"}
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_since(text: str | None) -> float | None:
    """ISO date or date-time (UTC unless it says otherwise), or epoch seconds; a clear error otherwise."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= value < 253402300800:  # year 10000
            raise ConfigError(f"--since {text!r}: epoch seconds out of range")
        return value
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected a date (2026-11-01), a date-time or epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass
class ExportResult:
    out: Path
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    by_verdict: dict[str, int] = field(default_factory=dict)


def _rows(store: Store, since: float | None, site: str | None) -> list[dict[str, Any]]:
    where = [f"e.type IN ({', '.join('?' * len(EBIKE_TYPES))})", "e.phase = 'start'"]
    params: list[Any] = list(EBIKE_TYPES)
    if since is not None:
        where.append("e.ts >= ?")
        params.append(since)
    if site is not None:
        where.append("u.site = ?")
        params.append(site)
    return store.query(f"""
        SELECT e.event_id, e.unit_id, e.ts, e.confidence, e.payload, u.site, u.model_id AS unit_model,
               l.verdict, l.username AS labelled_by, s.data
        FROM labels l
        JOIN events e ON e.event_id = l.event_id
        LEFT JOIN units u ON u.unit_id = e.unit_id
        LEFT JOIN snapshots s ON s.unit_id = e.unit_id AND s.snapshot_id = e.snapshot_id
        WHERE {' AND '.join(where)}
        ORDER BY e.ts, e.event_id""", params)


def _image_name(event_id: str) -> str:
    stem = event_id if _SAFE.match(event_id) else hashlib.sha256(event_id.encode()).hexdigest()[:32]
    return f"{stem}.jpg"


def export_dataset(store: Store, out: Path, since: float | None = None, site: str | None = None) -> ExportResult:
    result = ExportResult(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    manifest_rows = []
    truth_rows = []
    for row in _rows(store, since, site):
        expected = LABEL_VERDICTS.get(row["verdict"])
        if expected is None:
            result.skipped["not_a_label"] = result.skipped.get("not_a_label", 0) + 1
            continue
        if row["data"] is None:
            result.skipped["no_picture"] = result.skipped.get("no_picture", 0) + 1
            continue
        name = _image_name(row["event_id"])
        (images / name).write_bytes(bytes(row["data"]))
        try:
            deciding = json.loads(row["payload"]).get("model_id")
        except (ValueError, AttributeError):
            deciding = None
        # Events from before units named their model carry none: the unit's model now is the best guess.
        deciding_model = deciding or (f"{row['unit_model']} (unit's current model)" if row["unit_model"] else "")
        when = dt.datetime.fromtimestamp(row["ts"], dt.UTC).isoformat(timespec="seconds")
        truth_rows.append({"image": name, "expected": expected})
        manifest_rows.append({"image": name, "event_id": row["event_id"], "unit_id": row["unit_id"],
                              "site": row["site"] or "", "time": when, "verdict": row["verdict"],
                              "labelled_by": row["labelled_by"], "deciding_model": deciding_model,
                              "confidence": row["confidence"] if row["confidence"] is not None else ""})
        result.by_verdict[row["verdict"]] = result.by_verdict.get(row["verdict"], 0) + 1
        result.written += 1
    _write_csv(out / "truth.csv", ["image", "expected"], truth_rows)
    _write_csv(out / "manifest.csv", ["image", "event_id", "unit_id", "site", "time", "verdict", "labelled_by",
                                      "deciding_model", "confidence"], manifest_rows)
    (out / "manifest.json").write_text(json.dumps({
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "filters": {"since": since, "site": site}, "images": result.written, "by_verdict": result.by_verdict,
        "skipped": result.skipped, "labels": LABEL_VERDICTS,
        "pictures": "alert snapshots as sent by the units (anonymised, annotated): for scoring, not training",
        "score_with": "liftguard eval --model M --images images --truth truth.csv --out REPORT",
    }, indent=1))
    return result


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
