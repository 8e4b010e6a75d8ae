"""`liftguard-fleet dataset export` (issue 17): verdicts become a labelled set `liftguard eval --truth` scores."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
import zipfile
from pathlib import Path

import cv2
import pytest

from contract import samples
from contract.clips import ClipDetection, ClipFrame, ClipManifest, decode_chunk
from contract.model_format import TRAINING_CLASSES
from edge.decide.detect import reference_frames
from fleet.cli import main as fleet_main
from fleet.dataset import parse_since
from fleet.store import IngestBatch, Store
from tests.support.clips import chunks
from tools.evaluate import main as eval_main

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "liftguard-det.onnx"
DAY = 86400.0


def jpeg(image: object) -> bytes:
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return bytes(buf.tobytes())


def add_alert(store: Store, unit: str, ts: float, picture: bytes | None, verdict: str | None,
              model_id: str | None = "site-model-7") -> str:
    event_id = str(uuid.uuid4())
    event = samples.alert(unit, event_id=event_id, ts=ts, snapshot=f"snapshots/{event_id}", model_id=model_id)
    batch = IngestBatch()
    batch.events.append((event, time.time(), event.model_dump_json(exclude_none=True)))
    if picture is not None:
        batch.snapshots.append((unit, event_id, picture, time.time()))
    store.write_batch(batch)
    if verdict:
        store.set_label(event_id, verdict, "manager")
    return event_id


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    store = Store.open(url)
    store.migrate()
    now = time.time()
    for unit, site in (("lift-1", "Harbour View"), ("lift-9", "Elsewhere")):
        batch = IngestBatch()
        batch.add_heartbeat(samples.heartbeat(unit, site=site, model_id="site-model-7"), now)
        store.write_batch(batch)
    empty_car, ebike = (jpeg(f) for f in reference_frames())
    ids = {
        "confirmed": add_alert(store, "lift-1", now - 60, ebike, "confirmed"),
        "false_alarm": add_alert(store, "lift-1", now - 50, empty_car, "false_alarm", model_id=None),
        "acknowledged": add_alert(store, "lift-1", now - 40, ebike, "acknowledged"),
        "no_picture": add_alert(store, "lift-1", now - 30, None, "confirmed"),
        "unlabelled": add_alert(store, "lift-1", now - 20, ebike, None),
        "other_site": add_alert(store, "lift-9", now - 10, ebike, "confirmed"),
        "old": add_alert(store, "lift-1", now - 40 * DAY, empty_car, "false_alarm"),
    }
    store.close()
    return url, ids


def test_export_then_eval_scores_the_verdicts(labelled: tuple[str, dict[str, str]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, ids = labelled
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7 * DAY))
    out = tmp_path / "export"
    assert fleet_main(["dataset", "export", "--db", url, "--out", str(out), "--site", "Harbour View",
                       "--since", since]) == 0
    assert "2 labelled images" in capsys.readouterr().out
    truth = list(csv.DictReader((out / "truth.csv").open()))
    assert truth == [{"image": f"{ids['confirmed']}.jpg", "expected": "block"},
                     {"image": f"{ids['false_alarm']}.jpg", "expected": "allow"}]
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    assert [(m["unit_id"], m["site"], m["verdict"], m["deciding_model"]) for m in manifest] == [
        ("lift-1", "Harbour View", "confirmed", "site-model-7"),
        ("lift-1", "Harbour View", "false_alarm", "site-model-7 (unit's current model)")]
    summary = json.loads((out / "manifest.json").read_text())
    assert summary["skipped"] == {"not_a_label": 1, "no_picture": 1}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(t["image"] for t in truth)

    report = tmp_path / "report"
    assert eval_main(["--model", str(SHIPPED), "--images", str(out / "images"), "--truth", str(out / "truth.csv"),
                      "--bench-runs", "0", "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_images"] == 2
    assert metrics["ebike_recall"] == 1.0  # the shipped model blocks what the manager confirmed ...
    assert metrics["false_block_rate"] == 0.0  # ... and passes what they called a false alarm
    decisions = {r["image"]: (r["expected"], r["decided"]) for r in csv.DictReader((report / "decisions.csv").open())}
    assert decisions == {f"{ids['confirmed']}.jpg": ("block", "block"),
                         f"{ids['false_alarm']}.jpg": ("allow", "allow")}


def test_export_without_filters_takes_every_labelled_picture(labelled: tuple[str, dict[str, str]],
                                                             tmp_path: Path) -> None:
    url, ids = labelled
    assert fleet_main(["dataset", "export", "--db", url, "--out", str(tmp_path / "all")]) == 0
    images = {r["image"] for r in csv.DictReader((tmp_path / "all" / "truth.csv").open())}
    assert images == {f"{ids[k]}.jpg" for k in ("confirmed", "false_alarm", "other_site", "old")}


@pytest.mark.parametrize("bad", ["last tuesday", "10000-01-01", "1e30", "nan"])
def test_a_bad_since_is_a_clear_error(bad: str, labelled: tuple[str, dict[str, str]], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = labelled
    assert fleet_main(["dataset", "export", "--db", url, "--out", str(tmp_path / "x"), "--since", bad]) == 2
    assert "--since" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_since_accepts_dates_times_and_epochs() -> None:
    assert parse_since("2026-11-01") == 1793491200.0
    assert parse_since("2026-11-01T08:00+08:00") == 1793491200.0
    assert parse_since("1793491200") == 1793491200.0


# --- the YOLO corpus: decision frames of clips, with per-object corrections (issue 17 item 2) ----------


def clip_of(store: Store, unit: str, incident: str, image: object, detections: list[ClipDetection]) -> None:
    """A hold's clip as the unit uploads it: here one frame before the trigger and the decision frame."""
    from fleet.store.clips import ClipPart

    clip_id = uuid.uuid4().hex
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in ("frames/000.jpg", "frames/001.jpg"):
            zf.writestr(name, jpeg(image))
        zf.writestr("clip.json", ClipManifest(
            clip_id=clip_id, unit_id=unit, reason="hold", incident_id=incident, trigger_ts=10.0,
            frames=[ClipFrame(file="frames/000.jpg", t=-0.1, detections=[]),
                    ClipFrame(file="frames/001.jpg", t=0.0, detections=detections)]).model_dump_json())
    batch = IngestBatch()
    for raw in chunks(buf.getvalue()):
        sha, index, count, data = decode_chunk(raw)
        batch.clip_parts.append(ClipPart(unit, clip_id, sha, index, count, data, time.time()))
    store.write_batch(batch)
    assert [o.outcome for o in batch.clip_outcomes] == ["stored"]


def test_the_export_writes_a_yolo_corpus_the_trainer_reads_and_eval_scores(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edge.decide.detect import OnnxDetector
    from tools.features import load_split

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    store = Store.open(url)
    store.migrate()
    empty_car, ebike = reference_frames()
    seen = [ClipDetection(cls=d.cls, score=round(float(d.score), 4), box=(float(d.box[0]), float(d.box[1]),
                                                                          float(d.box[2]), float(d.box[3])))
            for d in OnnxDetector(SHIPPED).detect(ebike)]  # what the unit saw on the decision frame
    assert any(d.cls == "ebike" for d in seen)
    ghost = [ClipDetection(cls="ebike", score=0.61, box=(10.0, 20.0, 120.0, 200.0)),
             ClipDetection(cls="person", score=0.9, box=(150.0, 10.0, 260.0, 230.0))]
    now = time.time()
    alerts = {}
    for key, image, detections, verdict in (
            ("confirmed", ebike, seen, "confirmed"),
            ("stroller", empty_car, ghost, "false_alarm"),  # corrected: the "e-bike" was a stroller
            ("uncorrected", empty_car, ghost, "false_alarm"),  # not corrected: left out of the corpus
            ("no_clip", ebike, None, "confirmed")):
        event_id = add_alert(store, "lift-1", now - 60, jpeg(image), verdict)
        incident = store.get_alert(event_id)["incident_id"]  # type: ignore[index]
        if detections is not None:
            clip_of(store, "lift-1", incident, image, detections)
        alerts[key] = event_id
    store.set_object_labels(alerts["stroller"], 1, {0: "stroller", 1: "none"}, "manager", now)
    store.close()

    out = tmp_path / "export"
    assert fleet_main(["dataset", "export", "--db", url, "--out", str(out)]) == 0
    assert "YOLO corpus: 2 decision frames" in capsys.readouterr().out
    corpus = out / "corpus"
    summary = json.loads((out / "manifest.json").read_text())["corpus"]
    assert summary["skipped"] == {"needs_correction": 1, "no_clip": 1}
    samples_ = load_split(corpus, "train") + load_split(corpus, "val")  # the trainer's own loader
    by_stem = {s.image.stem: s for s in samples_}
    assert set(by_stem) == {alerts["confirmed"], alerts["stroller"]}
    stroller = by_stem[alerts["stroller"]].boxes
    h, w = empty_car.shape[:2]
    assert stroller.shape == (1, 5)  # the "none" person box is gone ...
    assert stroller[0].tolist() == pytest.approx([TRAINING_CLASSES.index("stroller"), 10 / w, 20 / h, 120 / w, 200 / h],
                                                 abs=1e-5)  # ... and the "e-bike" box has its corrected class
    confirmed = by_stem[alerts["confirmed"]].boxes
    assert len(confirmed) == len(seen) and TRAINING_CLASSES.index("ebike") in confirmed[:, 0]
    rows = list(csv.DictReader((corpus / "manifest.csv").open()))
    assert {(r["file"], r["source_group"]) for r in rows} == {(f"{alerts[k]}.jpg", "lift-1")
                                                             for k in ("confirmed", "stroller")}

    report = tmp_path / "report"
    split = next(s for s in ("train", "val") if (corpus / "images" / s / f"{alerts['confirmed']}.jpg").exists())
    assert eval_main(["--model", str(SHIPPED), "--images", str(corpus / "images" / split), "--labels",
                      str(corpus / "labels" / split), "--names", str(corpus / "data.yaml"), "--bench-runs", "0",
                      "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_images"] >= 1 and metrics["ebike_recall"] == 1.0  # the box labels read as an e-bike
