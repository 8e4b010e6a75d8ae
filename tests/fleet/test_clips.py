"""Event clips reach the fleet and play in the alert view (issue 17 items 1-2): a real Mosquitto, the fleet
server and a unit (pipeline + clip recorder + MQTT link, as `liftguard run` wires them); the store's rules
for parts, alerts, quotas and retention on both engines; the alert page in headless Chromium."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contract import samples
from contract.clips import ClipDetection, read_clip
from contract.models import ModelReportedPayload
from contract.mqtt import encode
from edge.act.unwired import LogActuators
from edge.config import Config, parse_config
from edge.decide.detect import OnnxDetector
from edge.report.events import FanOut
from edge.run.app import ClipClock, Pipeline, replay
from edge.run.session import _start_link, attach_clip_upload, start_clips
from edge.see.capture import Frame
from fleet.api import CSP
from fleet.store import IngestBatch, Store
from fleet.store.clips import PARTS_MAX_AGE_S, ClipPart
from tests.fleet.conftest import PASSWORD, FakeUnit, RunningFleet, start_fleet, wait_until
from tests.support.clips import chunks, clip_zip
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import brightness_model

BOX = [40, 40, 200, 220]


# --- a unit's hold, end to end -------------------------------------------------------------------


@dataclass
class ClipUnit:
    cfg: Config
    pipeline: Pipeline
    link: Any
    recorder: Any
    clock: ClipClock

    def hold(self, dark_s: float = 3.0, bright_s: float = 3.0, after_s: float = 5.0, fps: int = 10) -> None:
        """Replay a recording on clip time: an e-bike (a bright frame to the brightness model) comes and goes."""
        pattern = [5] * int(dark_s * fps) + [250] * int(bright_s * fps) + [5] * int(after_s * fps)
        rng = np.random.default_rng(7)
        frames = []
        for i, level in enumerate(pattern):
            image = np.full((360, 640, 3), level, np.uint8)
            image[::8, ::8] = rng.integers(0, 255, image[::8, ::8].shape, np.uint8)  # some texture: real JPEG sizes
            frames.append(Frame(i, i / fps, image))
        replay(self.pipeline, iter(frames), fps, self.clock)
        assert self.recorder.flush(60)

    def close(self) -> None:
        self.pipeline.close()
        self.recorder.close()
        self.link.close()


def start_clip_unit(broker: MosquittoBroker, tmp_path: Path, unit_id: str = "lift-1") -> ClipUnit:
    model = brightness_model(tmp_path / "m.onnx", BOX)
    cfg = parse_config({
        "unit": {"id": unit_id, "site": "Harbour View"}, "actuators": {"backend": "none"},
        "detector": {"model_path": str(model)}, "events": {"jsonl_path": "", "snapshot_dir": ""},
        "mqtt": {"url": broker.url, "outbox_path": str(tmp_path / unit_id / "outbox.sqlite3"), "heartbeat_s": 1},
        "clips": {"enabled": True, "dir": str(tmp_path / unit_id / "clips"), "near_miss_per_hour": 0,
                  "upload_interval_s": 0.05},
    })
    clock = ClipClock()
    start = time.time()
    fan_out = FanOut([])
    pipeline = Pipeline(cfg, OnnxDetector(model), LogActuators(), fan_out, clock=clock, t0=0.0,
                        wall=lambda t: start + t)
    recorder = start_clips(cfg, pipeline)
    link = _start_link(cfg, pipeline, fan_out, lambda: "online")
    assert attach_clip_upload(cfg, link, recorder) is not None
    assert link.wait_connected(60)
    return ClipUnit(cfg, pipeline, link, recorder, clock)


@pytest.fixture
def unit(fleet: RunningFleet, tmp_path: Path) -> Iterator[ClipUnit]:
    u = start_clip_unit(fleet.broker, tmp_path)
    yield u
    u.close()


def alert_with_clip(fleet: RunningFleet, timeout: float = 90.0) -> str:
    def found() -> str | None:
        rows = fleet.store.query("SELECT event_id FROM clips")
        return rows[0]["event_id"] if rows else None

    return str(wait_until(found, timeout))


def test_a_units_hold_clip_reaches_the_fleet_and_plays_in_the_alert_view(fleet: RunningFleet, unit: ClipUnit,
                                                                         tmp_path: Path) -> None:
    written: list[tuple[Path, bytes, float]] = []
    write = unit.recorder.write

    def keep_a_copy(clip: Any) -> Path:  # what the unit wrote, before the link uploads (and removes) it
        path = write(clip)
        written.append((path, path.read_bytes(), time.monotonic()))
        return path

    unit.recorder.write = keep_a_copy
    unit.hold()
    ((local, sent, written_at),) = written
    event_id = alert_with_clip(fleet)
    upload_s = time.monotonic() - written_at
    manifest, frames = read_clip(sent)
    alert = fleet.store.get_alert(event_id)
    assert alert is not None and alert["type"] == "ebike_blocked" and alert["incident_id"] == manifest.incident_id
    wait_until(lambda: not local.exists(), 30)  # gone from the unit once the broker had every chunk
    assert unit.link.metrics()["clips_uploaded"] == 1
    row = wait_until(lambda: (u := fleet.store.get_unit("lift-1")) and u["clips_uploaded"] == 1 and u, 30)
    assert row["clips_lost"] == 0  # from the unit's heartbeats
    print(f"clip: {len(frames)} frames, {len(sent) / 1024:.0f} KiB, {-(-len(sent) // 65536)} chunks, "
          f"stored by the fleet {upload_s:.2f} s after it was written")

    client, _csrf = fleet.login()
    view = client.get(f"/api/alerts/{event_id}").json()
    assert view["has_clip"] and view["clip_url"] == f"/api/alerts/{event_id}/clip"
    clip = client.get(view["clip_url"]).json()
    assert len(clip["frames"]) == len(frames) == 51  # 2 s before to 3 s after at 10 fps
    assert clip["frames"][0]["t"] == pytest.approx(-2.0) and clip["frames"][-1]["t"] == pytest.approx(3.0)
    key = clip["frames"][clip["key_frame"]]
    assert key["t"] == pytest.approx(0.0) and key["detections"][0]["cls"] == "ebike"
    for i in (0, clip["key_frame"], len(frames) - 1):
        got = client.get(clip["frames"][i]["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.content == frames[i]  # the unit's (blurred) JPEG, byte for byte
    page = client.get(view["page_url"])
    assert page.status_code == 200 and 'id="clip-player"' in page.text
    assert page.headers["content-security-policy"] == CSP  # no inline script, same protections
    assert client.get("/alerts").text.count("▶ clip") == 1
    assert "1 uploaded, 0 lost on the unit" in client.get("/units/lift-1").text
    with httpx.Client(base_url=fleet.url) as nobody:
        assert nobody.get(clip["frames"][0]["url"]).status_code == 401
        assert nobody.get(view["clip_url"]).status_code == 401


# --- the store's rules, on both engines ----------------------------------------------------------


def add_alert(store: Store, unit: str, incident: str) -> str:
    event = samples.alert(unit, incident_id=incident)
    batch = IngestBatch()
    batch.events.append((event, time.time(), event.model_dump_json(exclude_none=True)))
    store.write_batch(batch)
    return event.event_id


def send(store: Store, unit: str, clip_id: str, payloads: list[bytes], at: float | None = None,
         quota: int | None = None) -> list[Any]:
    from contract.clips import decode_chunk

    batch = IngestBatch()
    for raw in payloads:
        sha, index, count, data = decode_chunk(raw)
        batch.clip_parts.append(ClipPart(unit, clip_id, sha, index, count, data, at or time.time()))
    store.write_batch(batch, unit_clip_quota=quota)
    return batch.clip_outcomes


def test_a_clip_is_kept_only_whole_checked_and_for_a_stored_alert_of_its_unit(store: Store) -> None:
    event_id = add_alert(store, "lift-1", "incident-1")
    clip_id, data = clip_zip("lift-1", "incident-1", frames=40, size=(640, 360))
    parts = chunks(data)
    assert len(parts) >= 2
    assert send(store, "lift-1", clip_id, parts[:-1]) == []  # not whole yet
    assert store.clip_of_alert(event_id) is None
    (outcome,) = send(store, "lift-1", clip_id, parts[-1:] + parts[:1])  # the last one, and a duplicate
    assert outcome.outcome == "stored"
    stored = store.clip_of_alert(event_id)
    assert stored is not None and stored["frames"] == 40 and stored["clip_id"] == clip_id
    assert store.clip_frame("lift-1", clip_id, 39) == read_clip(data)[1][39]
    assert store.query("SELECT COUNT(*) AS n FROM clip_parts")[0]["n"] == 0

    damaged_id, damaged = clip_zip("lift-1", "incident-1")
    borrowed_id, borrowed = clip_zip("lift-1", "incident-1")
    near_id, near = clip_zip("lift-1", None, reason="near_miss")
    for why, unit, cid, payloads in (
            ("damaged in transit", "lift-1", damaged_id, chunks(damaged, sha256="0" * 64)),
            ("sent by another unit than the one that recorded it", "lift-2", borrowed_id, chunks(borrowed)),
            ("a near miss: no alert to belong to", "lift-1", near_id, chunks(near))):
        (outcome,) = send(store, unit, cid, payloads)
        assert outcome.outcome == "refused", why
    assert store.query("SELECT COUNT(*) AS n FROM clip_parts")[0]["n"] == 0
    assert store.query("SELECT COUNT(*) AS n FROM clips")[0]["n"] == 1


def test_a_clip_before_its_alert_waits_then_is_stored_and_unfinished_parts_expire(store: Store) -> None:
    clip_id, data = clip_zip("lift-1", "incident-late")
    (outcome,) = send(store, "lift-1", clip_id, chunks(data))
    assert outcome.outcome == "waiting"
    event_id = add_alert(store, "lift-1", "incident-late")  # another fleet server was still committing it
    assert [o.outcome for o in store.settle_clips(time.time())] == ["stored"]
    assert store.clip_of_alert(event_id) is not None

    orphan_id, orphan = clip_zip("lift-1", "incident-never", frames=40, size=(640, 360))
    assert len(chunks(orphan)) >= 2
    send(store, "lift-1", orphan_id, chunks(orphan)[:1], at=time.time())
    assert store.settle_clips(time.time()) == []  # not old yet
    gone = store.settle_clips(time.time() + PARTS_MAX_AGE_S + 1)
    assert [(o.clip_id, o.outcome) for o in gone] == [(orphan_id, "expired")]
    assert store.query("SELECT COUNT(*) AS n FROM clip_parts")[0]["n"] == 0


def test_each_unit_keeps_its_clips_within_its_quota_and_retention_removes_old_ones(store: Store) -> None:
    made = [clip_zip("lift-1", f"incident-{i}", frames=10) for i in range(3)]
    sizes = {clip_id: len(data) for clip_id, data in made}
    quota = len(made[1][1]) + len(made[2][1])  # room for two
    for i, (clip_id, data) in enumerate(made):
        add_alert(store, "lift-1", f"incident-{i}")
        send(store, "lift-1", clip_id, chunks(data), at=1000.0 + i, quota=quota)
    kept = [r["clip_id"] for r in store.query("SELECT clip_id FROM clips ORDER BY received_at")]
    assert kept == list(sizes)[1:]  # the oldest went to keep the unit within its quota
    assert store.query("SELECT COUNT(*) AS n FROM clip_frames")[0]["n"] == 20
    add_alert(store, "lift-2", "incident-x")
    other, data = clip_zip("lift-2", "incident-x", frames=10)
    send(store, "lift-2", other, chunks(data), at=5000.0, quota=len(data))  # another unit's quota is its own
    assert store.clip_bytes("lift-1") == sum(sizes[c] for c in kept)
    assert store.prune_clips(older_than=2000.0, max_total_bytes=10**9) == 2  # by age
    assert [r["clip_id"] for r in store.query("SELECT clip_id FROM clips")] == [other]
    assert store.prune_clips(older_than=0.0, max_total_bytes=len(data) - 1) == 1  # by total size
    assert store.query("SELECT COUNT(*) AS n FROM clip_frames")[0]["n"] == 0


def test_a_unit_cannot_park_unbounded_unfinished_parts(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from contract.clips import CLIP_CHUNK_BYTES, encode_chunk
    from fleet.store import clips as clip_store

    cap = 10 * CLIP_CHUNK_BYTES  # two 16 MiB clips in production; smaller here to keep the test light
    monkeypatch.setattr(clip_store, "UNIT_PARTS_MAX_BYTES", cap)
    sha = "ab" * 32
    outcomes = send(store, "lift-1", uuid.uuid4().hex, [encode_chunk(sha, i, 255, b"x" * CLIP_CHUNK_BYTES)
                                                         for i in range(12)])
    assert store.query("SELECT COALESCE(SUM(size_bytes), 0) AS n FROM clip_parts")[0]["n"] == cap
    assert [o.outcome for o in outcomes] == ["over_parts_cap"] * 2
    send(store, "lift-2", uuid.uuid4().hex, [encode_chunk(sha, 0, 255, b"x" * CLIP_CHUNK_BYTES)])  # its own cap
    assert store.query("SELECT COUNT(*) AS n FROM clip_parts WHERE unit_id = 'lift-2'")[0]["n"] == 1


# --- over the broker: what ingest counts ---------------------------------------------------------


def test_ingest_counts_bad_chunks_and_refused_clips(fleet: RunningFleet, make_unit: Any) -> None:
    u: FakeUnit = make_unit("lift-7")
    u.publish(f"clips/{uuid.uuid4().hex}", b"not a chunk")
    u.publish("clips/not-a-clip-id", chunks(clip_zip("lift-7", "i-1234567")[1])[0])
    clip_id, data = clip_zip("lift-7", "incident-77")
    for raw in chunks(data, sha256="0" * 64):  # damaged in transit
        u.publish(f"clips/{clip_id}", raw)
    counters = lambda: fleet.ingestor.stats.snapshot()["counters"]  # noqa: E731
    wait_until(lambda: counters().get("rejected_clip_refused") == 1, 30)
    assert counters()["rejected_bad_clip"] == 1 and counters()["rejected_bad_topic"] == 1
    assert fleet.store.query("SELECT COUNT(*) AS n FROM clips")[0]["n"] == 0


def test_model_reported_settles_the_rollout_row_even_after_the_command_stopped_waiting(
        fleet: RunningFleet, make_unit: Any, tmp_path: Path) -> None:
    from contract.onnx_header import check_model

    model = brightness_model(tmp_path / "cand.onnx", BOX, model_id="cand-2")
    fleet.store.add_model(check_model(model.read_bytes()), model.read_bytes())
    u: FakeUnit = make_unit("lift-8")
    wait_until(lambda: fleet.store.get_unit("lift-8"), 30)
    fleet.store.record_rollout("r-1", "cand-2", "lift-8", "shadow", "sent")
    fleet.store.record_rollout("r-1", "cand-2", "lift-8", "shadow", "no_answer", "no answer within 60 s")
    now = time.time()

    def report(**kw: Any) -> None:
        fields: dict[str, Any] = dict(ok=True, model_id="cand-2", stage="shadow", active="active-1", shadow="cand-2",
                                      detail="shadow model cand-2 running", ts=now)
        u.publish("model/reported", encode(ModelReportedPayload(**{**fields, **kw})), retain=True)

    report(ts=now - 3600, detail="an old retained report")  # from before this rollout: settles nothing
    report(stage="active", detail="another stage")
    u.heartbeat()  # a later message of the same unit: ingest has seen the two above once this is stored
    wait_until(lambda: (fleet.store.get_unit("lift-8") or {}).get("last_heartbeat"), 30)
    assert fleet.store.rollout_rows("r-1")[0]["state"] == "no_answer"
    report()
    row = wait_until(lambda: next((r for r in fleet.store.rollout_rows("r-1") if r["state"] == "ok"), None), 30)
    assert (row["active_model"], row["shadow_model"], row["detail"]) == ("active-1", "cand-2",
                                                                         "shadow model cand-2 running")
    fleet.store.record_rollout("r-1", "cand-2", "lift-8", "shadow", "receiving")  # a late in-between state
    assert fleet.store.rollout_rows("r-1")[0]["state"] == "ok"  # never undoes the outcome


# --- per-object corrections -----------------------------------------------------------------------


def stored_clip_alert(fleet: RunningFleet, unit: str = "lift-3") -> str:
    event_id = add_alert(fleet.store, unit, f"incident-{unit}")
    clip_id, data = clip_zip(unit, f"incident-{unit}", frames=6, detections=[
        ClipDetection(cls="ebike", score=0.91, box=(40, 30, 200, 160)),
        ClipDetection(cls="person", score=0.8, box=(210, 10, 300, 175))])
    send(fleet.store, unit, clip_id, chunks(data))
    assert fleet.store.clip_of_alert(event_id) is not None
    return event_id


def test_a_manager_corrects_the_class_of_an_object_on_the_decision_frame(fleet: RunningFleet) -> None:
    event_id = stored_clip_alert(fleet)
    client, csrf = fleet.login()
    url = f"/api/alerts/{event_id}/objects"
    body = {"frame": 2, "corrections": {"0": "stroller"}}
    assert client.post(url, json=body).status_code == 403  # no CSRF token
    done = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200, done.text
    assert [(o["object_idx"], o["seen_cls"], o["cls"], o["username"]) for o in done.json()["objects"]] == [
        (0, "ebike", "stroller", "admin")]
    for bad in ({"frame": 2, "corrections": {"0": "unicorn"}}, {"frame": 2, "corrections": {"5": "person"}},
                {"frame": 99, "corrections": {"0": "person"}}, {"frame": 2, "corrections": {}}):
        assert client.post(url, json=bad, headers={"X-CSRF-Token": csrf}).status_code == 422, bad
    clip = client.get(f"/api/alerts/{event_id}/clip").json()
    assert clip["key_frame"] == 2 and clip["objects"][0]["cls"] == "stroller"
    page = client.get(f"/alerts/{event_id}").text
    assert '<option value="stroller" selected>' in page


def test_the_alert_page_plays_the_clip_and_saves_a_correction_in_a_browser(
        browser: object, mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        event_id = stored_clip_alert(fleet)
        page = browser.new_context().new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(fleet.url + "/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("header")
        page.goto(f"{fleet.url}/alerts/{event_id}")
        page.wait_for_selector('#clip-player[data-ready="true"]')
        assert page.get_attribute("#clip-frame", "data-index") == "2"  # opens on the decision frame
        page.wait_for_selector("#clip-boxes .clip-box")
        assert page.locator("#clip-boxes .clip-box").count() == 2
        assert page.text_content("#clip-boxes .clip-box span") == "ebike 0.91"
        page.click("#clip-play")
        # (wait_until, not wait_for_function: the page's CSP forbids the eval that one needs)
        wait_until(lambda: page.get_attribute("#clip-frame", "data-index") == "5", 20)
        page.wait_for_selector('#clip-player[data-playing="false"]')
        assert page.evaluate("document.getElementById('clip-frame').naturalWidth") == 320
        page.select_option('select[name="1"]', "none")
        page.click("#object-save")
        wait_until(lambda: (page.text_content("#object-status") or "").startswith("Saved"), 20)
        assert [(o["object_idx"], o["cls"]) for o in fleet.store.object_labels(event_id)] == [(1, "none")]
        assert errors == []
        page.context.close()
    finally:
        fleet.stop()


def test_every_new_table_is_in_a_migration(store: Store) -> None:
    tables = {"clip_parts", "clips", "clip_frames", "object_labels"}
    for table in tables:
        assert store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0
    assert "0007_clips_and_object_labels" in store.applied_migrations()
