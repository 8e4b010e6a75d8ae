"""The link against a real Mosquitto: status, events, snapshots, heartbeats, commands, config, HA."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from contract.mqtt import StatusPayload, decode
from edge.report.link import MqttLink
from edge.report.outbox import Outbox
from tests.edge.link_support import FakeControl, FleetSubscriber, heartbeat_of, make_event, new_command, settings_for
from tests.support.mosquitto import MosquittoBroker

UNIT = "liftguard/v1/units/unit-a"


@pytest.fixture
def fleet(mosquitto: MosquittoBroker) -> Iterator[FleetSubscriber]:
    sub = FleetSubscriber(mosquitto, [f"{UNIT}/#", "homeassistant/#"])
    yield sub
    sub.close()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


def start_link(mosquitto: MosquittoBroker, tmp_path: Path, control: FakeControl | None = None,
               **overrides: object) -> MqttLink:
    link = MqttLink(settings_for(mosquitto, **overrides), Outbox(tmp_path / "outbox.db", max_rows=20),
                    control, heartbeat_of("unit-a"))
    link.start()
    assert link.wait_connected(10)
    return link


def states(fleet: FleetSubscriber) -> list[str]:
    return [decode(StatusPayload, p).state for p in fleet.payloads("/status")]


def test_online_on_connect_and_stopped_on_a_clean_close(mosquitto: MosquittoBroker, fleet: FleetSubscriber,
                                                          tmp_path: Path) -> None:
    link = start_link(mosquitto, tmp_path)
    assert fleet.wait_for(lambda f: states(f) == ["online"], 5)
    online = decode(StatusPayload, fleet.payloads("/status")[0])
    assert (online.software, online.model_id) == ("0.1.0-test", "test-model")
    link.close()
    assert fleet.wait_for(lambda f: states(f) == ["online", "stopped"], 5)


def test_an_event_is_delivered_and_then_removed_from_the_outbox(mosquitto: MosquittoBroker,
                                                                fleet: FleetSubscriber, tmp_path: Path) -> None:
    link = start_link(mosquitto, tmp_path)
    event = make_event()
    link.emit(event)
    assert fleet.wait_for(lambda f: f.event_ids() == {event.event_id}, 5)
    assert link.wait_drained(5)
    link.close()


def test_a_snapshot_follows_its_event_byte_for_byte(mosquitto: MosquittoBroker, fleet: FleetSubscriber,
                                                    tmp_path: Path) -> None:
    # The pipeline anonymises where it draws (tests/edge/test_pipeline_privacy.py); the link only carries.
    link = start_link(mosquitto, tmp_path)
    yy, xx = np.mgrid[0:120, 0:160]
    frame = np.repeat(((yy // 4 + xx // 4) % 2 * 255).astype(np.uint8)[:, :, None], 3, axis=2)  # checkerboard
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    event = make_event()
    link.emit(event, jpeg)
    topic = f"snapshots/{event.event_id}"
    assert fleet.wait_for(lambda f: bool(f.payloads(topic)), 5)
    assert fleet.payloads(topic)[0] == jpeg, "not decoded, blurred or re-encoded a second time"
    assert json.loads(fleet.payloads("/events")[0])["snapshot"] == topic
    link.close()


def test_heartbeat_reports_the_outbox(mosquitto: MosquittoBroker, fleet: FleetSubscriber, tmp_path: Path) -> None:
    link = start_link(mosquitto, tmp_path)
    assert fleet.wait_for(lambda f: bool(f.payloads("/heartbeat")), 5)
    beat = json.loads(fleet.payloads("/heartbeat")[0])
    assert beat["outbox_depth"] == 0 and beat["unit_id"] == "unit-a"
    link.close()


def test_a_full_outbox_evicts_counts_and_keeps_running_while_offline(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "never-started")  # nothing listens on its port
    link = MqttLink(settings_for(broker), Outbox(tmp_path / "outbox.db", max_rows=10), None, heartbeat_of())
    link.start()
    for n in range(30):
        link.emit(make_event(n=n))
    assert link.outbox.depth() == 10
    assert link.outbox.evicted() == 20
    assert link.metrics()["outbox_evicted"] == 20
    link.close()


def test_commands_are_executed_and_answered(mosquitto: MosquittoBroker, fleet: FleetSubscriber,
                                            control: FakeControl, tmp_path: Path) -> None:
    link = start_link(mosquitto, tmp_path, control)
    fleet.client.publish(f"{UNIT}/cmd/release", new_command({"reason": "lobby"}), qos=1)
    fleet.client.publish(f"{UNIT}/cmd/disable", new_command(), qos=1)
    fleet.client.publish(f"{UNIT}/cmd/disable", b"not json", qos=1)
    assert fleet.wait_for(lambda f: len(f.payloads("/cmd_result")) == 3, 5)
    results = [json.loads(p) for p in fleet.payloads("/cmd_result")]
    assert [(r["command"], r["ok"]) for r in results] == [("release", True), ("disable", True), ("disable", False)]
    assert control.calls == [("release_hold", "lobby"), ("set_blocking", False)]
    assert link.metrics()["commands_rejected"] == 1
    link.close()


def test_a_snapshot_command_sends_the_pipelines_picture_unchanged(
        mosquitto: MosquittoBroker, fleet: FleetSubscriber, control: FakeControl, tmp_path: Path) -> None:
    control.frame = cv2.imencode(".jpg", np.full((60, 80, 3), 128, np.uint8))[1].tobytes()
    link = start_link(mosquitto, tmp_path, control)
    command = {"command_id": "cmd-snap-1", "ts": time.time()}
    fleet.client.publish(f"{UNIT}/cmd/snapshot", json.dumps(command).encode(), qos=1)
    assert fleet.wait_for(lambda f: bool(f.payloads("snapshots/cmd-snap-1")), 5)
    assert fleet.payloads("snapshots/cmd-snap-1")[0] == control.frame
    assert json.loads(fleet.payloads("/cmd_result")[0])["detail"] == "snapshot snapshots/cmd-snap-1"
    link.close()


def test_retained_desired_config_is_applied_on_connect_and_reported(
        mosquitto: MosquittoBroker, fleet: FleetSubscriber, control: FakeControl, tmp_path: Path) -> None:
    desired = {"config": {"policy": {"hold_max_s": 60}}, "version": 7}
    fleet.client.publish(f"{UNIT}/config/desired", json.dumps(desired).encode(), qos=1, retain=True)
    link = start_link(mosquitto, tmp_path, control)
    assert fleet.wait_for(lambda f: bool(f.payloads("config/reported")), 5)
    report = json.loads(fleet.payloads("config/reported")[0])
    assert report["ok"] and report["version"] == 7
    assert report["config"]["policy"]["hold_max_s"] == 60
    assert control.config.policy.hold_max_s == 60
    link.close()


def test_an_invalid_desired_config_changes_nothing_and_is_reported(
        mosquitto: MosquittoBroker, fleet: FleetSubscriber, control: FakeControl, tmp_path: Path) -> None:
    desired = {"config": {"policy": {"hold_max_s": 100000}}, "version": 8}
    fleet.client.publish(f"{UNIT}/config/desired", json.dumps(desired).encode(), qos=1, retain=True)
    link = start_link(mosquitto, tmp_path, control)
    assert fleet.wait_for(lambda f: bool(f.payloads("config/reported")), 5)
    report = json.loads(fleet.payloads("config/reported")[0])
    assert not report["ok"] and "hold_max_s" in report["detail"]
    assert control.config.policy.hold_max_s == 120
    link.close()


def test_home_assistant_discovery_and_door_hold_state(mosquitto: MosquittoBroker, fleet: FleetSubscriber,
                                                      tmp_path: Path) -> None:
    link = start_link(mosquitto, tmp_path, home_assistant=True)
    link.set_relay_state(True)
    assert fleet.wait_for(lambda f: f.payloads("ha/door_hold") == [b"ON"], 30)
    link.set_relay_state(False)
    assert fleet.wait_for(lambda f: f.payloads("ha/door_hold") == [b"ON", b"OFF"], 30)
    door = json.loads(fleet.payloads("homeassistant/binary_sensor/unit-a/door_hold/config")[0])
    assert door["state_topic"] == f"{UNIT}/ha/door_hold"
    assert door["availability"][0]["topic"] == f"{UNIT}/status"
    blocks = json.loads(fleet.payloads("homeassistant/event/unit-a/blocks/config")[0])
    assert "ebike_blocked" in blocks["event_types"]
    link.close()
