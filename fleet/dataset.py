"""`liftguard-fleet dataset export`: the managers' verdicts as a labelled image set (issue 17).

    liftguard-fleet dataset export --out DIR [--since 2026-11-01] [--site "Harbour View"]

Writes
    DIR/images/<event>.jpg   the alert's picture as the unit sent it
    DIR/truth.csv            image,expected  (confirmed → block, false_alarm → allow)
    DIR/manifest.csv         image, event_id, unit_id, site, time (UTC ISO), verdict, labelled_by,
                             deciding_model, confidence
    DIR/manifest.json        what was asked, how many were written and why others were left out
    DIR/corpus/              a YOLO corpus in the tools/corpus.py layout (images/{train,val}/,
                             labels/{train,val}/, data.yaml, manifest.csv), from the alerts that have a clip:
                             the decision frame (a raw frame, faces blurred on the unit, no drawing on it)
                             and its boxes, with the managers' per-object corrections applied

`liftguard eval --model M --images DIR/images --truth DIR/truth.csv --out R` scores any model on it:
how often it would have blocked what managers confirmed and passed what they called a false alarm.

Only `confirmed` and `false_alarm` are labels; `acknowledged` says nothing about what was in the car.
The pictures are the alert snapshots: anonymised on the unit and annotated with the unit's own boxes
and captions. They are right for scoring decisions at this site (the same picture the manager judged).
For training, `corpus/` holds the raw decision frame of each alert's clip. Its boxes are the unit's own
detections, corrected where a manager said what an object really is (`none`: not an object, the box is
dropped). A false alarm says the e-bike box was wrong but not what it was, so a false alarm whose
e-bike boxes are not all corrected is left out of the corpus (`needs_correction`): a guess would teach
the model something nobody said. Boxes of classes outside TRAINING_CLASSES are dropped and counted.
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

from contract.clips import ClipManifest, jpeg_size
from contract.errors import ConfigError, PayloadError
from contract.model_format import TRAINING_CLASSES
from fleet.alerts import EBIKE_TYPES
from fleet.store import Store

CORPUS_MANIFEST_FIELDS = ("file", "split", "source", "source_group", "licence", "n_boxes")  # tools/corpus.py

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
    corpus_images: int = 0
    corpus_boxes: int = 0
    corpus_skipped: dict[str, int] = field(default_factory=dict)

    def skip_corpus(self, why: str, n: int = 1) -> None:
        self.corpus_skipped[why] = self.corpus_skipped.get(why, 0) + n


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
    corpus_rows: list[dict[str, Any]] = []
    for row in _rows(store, since, site):
        expected = LABEL_VERDICTS.get(row["verdict"])
        if expected is None:
            result.skipped["not_a_label"] = result.skipped.get("not_a_label", 0) + 1
            continue
        _corpus_item(store, row, out / "corpus", result, corpus_rows)
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
        "corpus": {"images": result.corpus_images, "boxes": result.corpus_boxes, "skipped": result.corpus_skipped,
                   "classes": list(TRAINING_CLASSES),
                   "pictures": "the decision frame of each alert's clip (raw, faces blurred on the unit)",
                   "boxes_from": "the unit's detections, with the managers' per-object corrections"},
    }, indent=1))
    _write_corpus_index(out / "corpus", corpus_rows)
    return result


def _split(event_id: str) -> str:
    """One alert in five goes to `val`, by a hash of its id: the same alert lands in the same split on every export."""
    return "val" if hashlib.sha256(event_id.encode()).digest()[0] % 5 == 0 else "train"


def _corpus_item(store: Store, row: dict[str, Any], corpus: Path, result: ExportResult,
                 index: list[dict[str, Any]]) -> None:
    """The alert's decision frame and its YOLO label file, if it has a clip and its labels are decided."""
    clip = store.clip_of_alert(row["event_id"])
    if clip is None:
        result.skip_corpus("no_clip")
        return
    manifest = ClipManifest.model_validate(clip["manifest"])
    key = manifest.key_frame()
    jpeg = store.clip_frame(clip["unit_id"], clip["clip_id"], key)
    if jpeg is None or not manifest.frames:
        result.skip_corpus("no_frame")
        return
    try:
        width, height = jpeg_size(jpeg)
    except PayloadError:
        result.skip_corpus("unreadable_frame")
        return
    fixes = {int(r["object_idx"]): str(r["cls"]) for r in store.object_labels(row["event_id"])
             if int(r["frame_idx"]) == key}
    lines = []
    for i, d in enumerate(manifest.frames[key].detections):
        cls = fixes.get(i)
        if cls is None and row["verdict"] == "false_alarm" and d.cls == "ebike":
            result.skip_corpus("needs_correction")  # not an e-bike, but nobody said what it is
            return
        cls = cls or d.cls
        if cls == "none":
            continue
        if cls not in TRAINING_CLASSES:
            result.skip_corpus("unknown_class_boxes")
            continue
        x1, y1 = max(0.0, d.box[0]), max(0.0, d.box[1])
        x2, y2 = min(float(width), d.box[2]), min(float(height), d.box[3])
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        lines.append(f"{TRAINING_CLASSES.index(cls)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
    split = _split(row["event_id"])
    stem = _image_name(row["event_id"]).removesuffix(".jpg")
    for folder in ("images", "labels"):
        (corpus / folder / split).mkdir(parents=True, exist_ok=True)
    (corpus / "images" / split / f"{stem}.jpg").write_bytes(jpeg)
    (corpus / "labels" / split / f"{stem}.txt").write_text("".join(lines))
    index.append({"file": f"{stem}.jpg", "split": split, "source": "fleet", "source_group": row["unit_id"],
                  "licence": "own site footage", "n_boxes": len(lines)})
    result.corpus_images += 1
    result.corpus_boxes += len(lines)


def _write_corpus_index(corpus: Path, rows: list[dict[str, Any]]) -> None:
    for split in ("train", "val"):
        for folder in ("images", "labels"):
            (corpus / folder / split).mkdir(parents=True, exist_ok=True)
    _write_csv(corpus / "manifest.csv", list(CORPUS_MANIFEST_FIELDS), rows)
    names = ", ".join(f'"{n}"' for n in TRAINING_CLASSES)  # the same text as tools/corpus.py write_data_yaml
    (corpus / "data.yaml").write_text(f"# YOLO dataset description written by liftguard-fleet dataset export\n"
                                      f"path: {corpus.resolve()}\ntrain: images/train\nval: images/val\n"
                                      f"nc: {len(TRAINING_CLASSES)}\nnames: [{names}]\n")


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
