"""`liftguard-fleet dataset export` (issue 17): verdicts become a labelled set `liftguard eval --truth` scores."""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path

import cv2
import pytest

from contract import samples
from edge.decide.detect import reference_frames
from fleet.cli import main as fleet_main
from fleet.dataset import parse_since
from fleet.store import IngestBatch, Store
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
