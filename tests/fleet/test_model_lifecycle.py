"""Model registry and staged rollout (issue 17): a real Mosquitto, the fleet server, a device unit
(pipeline + MQTT link, as `liftguard run` assembles them), and `liftguard-fleet models …`."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest

from contract.errors import ModelError
from contract.models import CHUNK_BYTES, ModelArgs, ModelReportedPayload, encode_chunk
from contract.mqtt import CommandPayload, encode, unit_topic
from contract.mqtt_client import new_client
from contract.onnx_header import check_model, read_header
from edge.act.unwired import LogActuators
from edge.config import Config, parse_config
from edge.report.events import FanOut
from edge.report.model_update import ModelState
from edge.run.app import Pipeline
from edge.run.models import load_checked, startup_detector
from edge.run.session import _start_link, start_models
from fleet.cli import main as fleet_main
from tests.fleet.conftest import RunningFleet, wait_until
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import brightness_model, constant_model, metadata

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "liftguard-det.onnx"
SHIPPED_ID = check_model(SHIPPED.read_bytes()).meta.model_id
BOX = [40, 40, 200, 220]


# --- the registry's file check, without onnx/onnxruntime ------------------------------------------


def test_the_header_reader_sees_what_onnxruntime_sees() -> None:
    header = read_header(SHIPPED.read_bytes())
    session = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    assert header.props == dict(session.get_modelmeta().custom_metadata_map)
    assert list(header.inputs) == [i.name for i in session.get_inputs()]
    assert header.inputs["images"] == tuple(session.get_inputs()[0].shape)
    assert list(header.outputs) == [o.name for o in session.get_outputs()]
    checked = check_model(SHIPPED.read_bytes())
    assert checked.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: p.write_bytes(b"\x08\x07garbage" * 100) or p, "not a readable ONNX file"),
    (lambda p: p.write_bytes(SHIPPED.read_bytes()[:100_000]) or p, "not a readable ONNX file"),
    (lambda p: constant_model(p, [[1, 1, 9, 9, 0.9, 0]], props=metadata(classes="<drop>")), "lacks"),
    (lambda p: constant_model(p, [[1, 1, 9, 9, 0.9, 0]], props=metadata(liftguard_format="2")), "format"),
    (lambda p: constant_model(p, [[1, 1, 9, 9, 0.9, 0]], input_hw=(128, 320)), "input shape"),
    (lambda p: constant_model(p, [[1, 1, 9, 9, 0.9, 0]], output_name="boxes"), "no output named"),
    (lambda p: constant_model(p, [[1, 1, 9, 9, 0.9, 0]], props=metadata(model_id="../x")), "plain name"),
], ids=["junk", "truncated", "no-classes", "format-2", "shape", "output-name", "model-id"])
def test_the_registry_refuses_what_the_device_refuses(tmp_path: Path, make: Any, why: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.onnx"
    make(path)
    with pytest.raises(ModelError, match=why):
        check_model(path.read_bytes(), str(path))
    with pytest.raises(ModelError):  # and the device agrees
        load_checked(path, parse_config({}))
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    assert fleet_main(["models", "add", str(path), "--db", db]) == 2
    assert why.split()[0] in capsys.readouterr().err
    assert fleet_main(["models", "list", "--db", db]) == 0
    assert "bad" not in capsys.readouterr().out


def test_models_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    assert fleet_main(["models", "add", str(SHIPPED), "--db", db]) == 0
    assert f"{SHIPPED_ID}: added" in capsys.readouterr().out
    assert fleet_main(["models", "add", str(SHIPPED), "--db", db]) == 0
    assert "already registered" in capsys.readouterr().out
    other = brightness_model(tmp_path / "o.onnx", BOX, model_id=SHIPPED_ID)  # same id, other bytes
    assert fleet_main(["models", "add", str(other), "--db", db]) == 2
    assert "already registered for another file" in capsys.readouterr().err
    assert fleet_main(["models", "list", "--db", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert [(m["model_id"], m["sha256"]) for m in listed] == [
        (SHIPPED_ID, hashlib.sha256(SHIPPED.read_bytes()).hexdigest())]


# --- rollout to a unit over a real broker --------------------------------------------------------


@dataclass
class Unit:
    cfg: Config
    pipeline: Pipeline
    link: Any
    updater: Any

    def close(self) -> None:
        self.link.close()
        self.pipeline.close()


def start_unit(broker: MosquittoBroker, tmp_path: Path, unit_id: str, model: Path) -> Unit:
    cfg = parse_config({
        "unit": {"id": unit_id, "site": "Harbour View"}, "actuators": {"backend": "none"},
        "detector": {"model_path": str(model)}, "events": {"jsonl_path": "", "snapshot_dir": ""},
        "mqtt": {"url": broker.url, "outbox_path": str(tmp_path / unit_id / "outbox.sqlite3"), "heartbeat_s": 1},
        "models": {"dir": str(tmp_path / unit_id / "models")},
    })
    detector, note = startup_detector(cfg)
    assert note is None
    fan_out = FanOut([])
    pipeline = Pipeline(cfg, detector, LogActuators(), fan_out)
    updater = start_models(cfg, pipeline)
    link = _start_link(cfg, pipeline, fan_out, lambda: "online")
    link.attach_models(updater)
    assert link.wait_connected(60)
    return Unit(cfg, pipeline, link, updater)


class Watcher:
    """The fleet's view of one unit's `model/reported` and heartbeats."""

    def __init__(self, broker: MosquittoBroker, unit_id: str) -> None:
        self.reports: list[ModelReportedPayload] = []
        self.beats: list[dict[str, Any]] = []
        self.client = new_client(f"watch-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe([(unit_topic(unit_id, "model/reported"), 1), (unit_topic(unit_id, "heartbeat"), 0)])
        self.client.loop_start()
        assert subscribed.wait(60), "the watcher's subscription was not confirmed"

    def _on(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("model/reported") and not msg.retain:
            self.reports.append(ModelReportedPayload.model_validate_json(msg.payload))
        elif msg.topic.endswith("heartbeat"):
            self.beats.append(json.loads(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def unit(fleet: RunningFleet, tmp_path: Path) -> Iterator[Unit]:
    active = brightness_model(tmp_path / "active.onnx", BOX, cls=4, model_id="active-1")  # sees a person
    u = start_unit(fleet.broker, tmp_path, "lift-1", active)
    wait_until(lambda: fleet.store.query("SELECT unit_id FROM units WHERE unit_id = 'lift-1'"), 60)
    yield u
    u.close()


def rollout(fleet: RunningFleet, *args: str) -> int:
    return fleet_main(["models", "rollout", *args, "--db", fleet.ctx.settings.db, "--mqtt", fleet.broker.url,
                       "--wait-s", "60"])


def test_a_model_rolled_out_in_shadow_runs_beside_the_active_one(fleet: RunningFleet, unit: Unit, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    candidate = brightness_model(tmp_path / "cand.onnx", BOX, cls=0, model_id="cand-2")
    db = fleet.ctx.settings.db
    assert fleet_main(["models", "add", str(candidate), "--db", db]) == 0
    watcher = Watcher(fleet.broker, "lift-1")
    try:
        assert rollout(fleet, "cand-2", "--site", "Harbour View", "--stage", "shadow") == 0
        assert "lift-1: ok" in capsys.readouterr().out
        assert unit.pipeline.detector.metadata.model_id == "active-1"  # the active model is untouched
        assert unit.pipeline.shadow is not None and unit.pipeline.shadow.model_id == "cand-2"
        state = ModelState.load(unit.cfg.models.dir)
        assert state.shadow is not None and state.shadow.model_id == "cand-2"
        assert Path(state.shadow.path).read_bytes() == candidate.read_bytes()
        assert wait_until(lambda: any(b.get("shadow_model_id") == "cand-2" for b in watcher.beats), 60)
        row = fleet.store.rollout_rows()[-1]
        assert (row["unit_id"], row["state"], row["shadow_model"], row["active_model"]) == (
            "lift-1", "ok", "cand-2", "active-1")
        shadow_of = lambda: fleet.store.query(  # noqa: E731  (what ingest stored from the heartbeats)
            "SELECT shadow_model_id FROM units WHERE unit_id = 'lift-1'")[0]["shadow_model_id"]
        assert wait_until(lambda: shadow_of() == "cand-2", 60)
        assert fleet_main(["models", "list", "--db", db, "--units"]) == 0
        assert "lift-1: active active-1, shadow cand-2; last rollout cand-2 shadow: ok" in capsys.readouterr().out
        assert rollout(fleet, "cand-2", "--units", "lift-1", "--stage", "off") == 0
        assert unit.pipeline.shadow is None
        assert wait_until(lambda: shadow_of() is None, 60)
    finally:
        watcher.close()


def send_by_hand(broker: MosquittoBroker, unit_id: str, args: ModelArgs, data: bytes) -> None:
    """What `models rollout` sends, with the bytes chosen by the test (a transfer corrupted on the way)."""
    client = new_client(f"hand-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        cmd = CommandPayload(command_id=uuid.uuid4().hex, ts=time.time(), args=args.model_dump(mode="json"))
        infos = [client.publish(unit_topic(unit_id, "cmd/model"), encode(cmd), qos=1)]
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        for i, chunk in enumerate(chunks):
            infos.append(client.publish(unit_topic(unit_id, "model/data"),
                                        encode_chunk(args.sha256, i, len(chunks), chunk), qos=1))
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_model_corrupted_in_transit_is_refused_and_the_unit_keeps_its_model(fleet: RunningFleet, unit: Unit) -> None:
    good = SHIPPED.read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    args = ModelArgs(stage="active", model_id=SHIPPED_ID, sha256=hashlib.sha256(good).hexdigest(),
                     size=len(good), chunks=-(-len(good) // CHUNK_BYTES))
    watcher = Watcher(fleet.broker, "lift-1")
    try:
        send_by_hand(fleet.broker, "lift-1", args, bytes(corrupt))
        assert wait_until(lambda: watcher.reports, 60)
    finally:
        watcher.close()
    report = watcher.reports[-1]
    assert not report.ok and report.detail.startswith("refused") and report.active == "active-1"
    assert unit.pipeline.detector.metadata.model_id == "active-1"
    assert not list(Path(unit.cfg.models.dir).glob("*.onnx"))  # nothing of it was kept
    assert unit.updater.counts["refused"] == 1


def test_an_active_model_that_fails_its_self_check_is_rolled_back(fleet: RunningFleet, unit: Unit, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Well-formed (the registry accepts it) but constant: the device's self-check refuses it after download.
    constant = constant_model(tmp_path / "const.onnx", [[10, 10, 90, 90, 0.9, 0]],
                              props=metadata(model_id="const-3"))
    good = brightness_model(tmp_path / "good.onnx", BOX, cls=0, model_id="good-4")
    db = fleet.ctx.settings.db
    for path in (constant, good):
        assert fleet_main(["models", "add", str(path), "--db", db]) == 0
    assert rollout(fleet, "const-3", "--units", "lift-1", "--stage", "active") == 1
    out = capsys.readouterr().out
    assert "lift-1: failed" in out and "rolled back to active-1" in out and "self-check" in out
    assert unit.pipeline.detector.metadata.model_id == "active-1"
    assert rollout(fleet, "good-4", "--units", "lift-1", "--stage", "active") == 0
    assert unit.pipeline.detector.metadata.model_id == "good-4"
    state = ModelState.load(unit.cfg.models.dir)
    assert state.active is not None and state.active.model_id == "good-4"
    assert state.previous is not None and state.previous.model_id == "active-1"
    assert any("const-3" in r for r in state.rollbacks)


def test_a_rolled_out_model_that_fails_at_start_up_is_rolled_back(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    previous = shutil.copy(brightness_model(tmp_path / "p.onnx", BOX, model_id="prev-1"), folder / "prev.onnx")
    new = shutil.copy(brightness_model(tmp_path / "n.onnx", BOX, model_id="new-2"), folder / "new.onnx")
    ModelState(active=_slot("new-2", new), previous=_slot("prev-1", previous)).save(folder)
    cfg = parse_config({"models": {"dir": str(folder)}})
    detector, note = startup_detector(cfg)
    assert detector.metadata.model_id == "new-2" and note is None
    Path(new).write_bytes(Path(new).read_bytes()[:500])  # the swapped-in file no longer loads (disk damage)
    detector, note = startup_detector(cfg)
    assert detector.metadata.model_id == "prev-1"
    assert note is not None and note.startswith("rolled back to prev-1")
    state = ModelState.load(folder)
    assert state.active is not None and state.active.model_id == "prev-1" and state.rollbacks


def _slot(model_id: str, path: str | Path) -> Any:
    from edge.report.model_update import Slot

    return Slot(model_id, str(path))


def test_shadow_agreement_counts_would_be_holds_against_the_relay_and_the_verdicts(tmp_path: Path) -> None:
    from contract import samples
    from fleet.store import IngestBatch, Store

    store = Store.open(f"sqlite:///{tmp_path / 'f.db'}")
    store.migrate()
    now = time.time()
    confirmed = samples.alert("lift-1", ts=now - 100)
    false_alarm = samples.alert("lift-1", ts=now - 50)
    batch = IngestBatch()
    for e in (confirmed, false_alarm):
        batch.events.append((e, now, e.model_dump_json(exclude_none=True)))

    def shadow(ts: float, would: str, agrees: bool) -> None:
        e = samples.alert("lift-1", ts=ts, type="shadow_decision", model_id="cand-2", would=would, agrees=agrees,
                          phase="start" if would == "hold" else "end")
        batch.events.append((e, now, e.model_dump_json(exclude_none=True)))

    shadow(now - 99, "hold", True)  # with the confirmed alert, relay agreed
    shadow(now - 90, "release", True)
    shadow(now - 48, "hold", True)  # it would also have held on the false alarm
    shadow(now - 20, "hold", False)  # a hold the active model did not make, no verdict near
    store.write_batch(batch)
    store.set_label(confirmed.event_id, "confirmed", "m")
    store.set_label(false_alarm.event_id, "false_alarm", "m")
    assert store.shadow_agreement() == [{"unit_id": "lift-1", "model_id": "cand-2", "would_hold": 3, "agreed": 2,
                                         "on_confirmed": 1, "on_false_alarm": 1, "missed_confirmed": 0}]
    store.close()


@pytest.mark.parametrize("model_id", ["../../etc/evil", "a/b", "x\\y", ".hidden", "a" * 129, "ok\n"])
def test_a_model_id_that_is_not_a_plain_file_name_is_refused(model_id: str) -> None:
    sha = "0" * 64
    with pytest.raises(ValueError, match="model_id"):
        ModelArgs(stage="shadow", model_id=model_id, sha256=sha, size=10, chunks=1)
    assert ModelArgs(stage="shadow", model_id="liftguard-det-0.7.0+site3", sha256=sha, size=10, chunks=1)


def test_the_registry_round_trips_on_both_engines(store: Any) -> None:
    data = SHIPPED.read_bytes()
    checked = check_model(data)
    assert store.add_model(checked, data, "ops") is True
    assert store.add_model(checked, data, "ops") is False
    row = store.get_model(checked.meta.model_id)
    assert row is not None and row["data"] == data and row["sha256"] == checked.sha256
    store.record_rollout("r1", checked.meta.model_id, "lift-1", "shadow", "sent")
    store.record_rollout("r1", checked.meta.model_id, "lift-1", "shadow", "ok", "runs in shadow", "a-1",
                         checked.meta.model_id)
    (listed,) = store.list_models()
    assert (listed["shadow_units"], listed["active_units"]) == (1, 0)
    (rollout_row,) = store.rollout_rows("r1")
    assert (rollout_row["state"], rollout_row["shadow_model"]) == ("ok", checked.meta.model_id)
