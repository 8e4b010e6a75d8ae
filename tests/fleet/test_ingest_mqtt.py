"""Ingest through a real Mosquitto: validation, dedupe, online/offline, durability, shared subscription."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.mqtt import encode, unit_topic
from fleet.api import unit_view
from tests.fleet.conftest import FakeUnit, RunningFleet, start_fleet, wait_until
from tests.fleet.test_store import alert
from tests.support.mosquitto import MosquittoBroker


def counters(fleet: RunningFleet) -> dict[str, int]:
    return dict(fleet.ingestor.stats.snapshot()["counters"])


def test_an_alert_and_its_snapshot_are_stored_once_even_when_redelivered(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-001")
    event = unit.alert()
    unit.publish("events", encode(event))  # at-least-once: the device resends after a lost PUBACK
    wait_until(lambda: counters(fleet).get("duplicate_events") == 1)
    wait_until(lambda: (fleet.store.get_alert(event.event_id) or {}).get("has_snapshot"))
    assert fleet.store.count_events() == 1
    assert fleet.store.get_snapshot("lift-001", event.event_id).startswith(b"\xff\xd8")  # type: ignore[union-attr]


def test_a_payload_naming_another_unit_is_rejected_and_counted(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    mallory = make_unit("lift-666")
    spoof = make_unit("lift-007").alert(with_snapshot=False).model_copy(update={"event_id": str(uuid.uuid4())})
    mallory.publish("events", encode(spoof))  # lift-666 claims to speak for lift-007
    mallory.publish("heartbeat", b"{garbage")
    wait_until(lambda: counters(fleet).get("rejected_unit_mismatch") == 1
               and counters(fleet).get("rejected_bad_payload") == 1)
    assert fleet.store.get_alert(spoof.event_id) is None


def test_units_go_offline_by_lwt_and_by_heartbeat_silence(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    dropped, quiet = make_unit("lift-a"), make_unit("lift-b")
    dropped.heartbeat()
    quiet.heartbeat()
    wait_until(lambda: (fleet.store.get_unit("lift-a") or {}).get("software") == "1.4.2"
               and (fleet.store.get_unit("lift-b") or {}).get("software") == "1.4.2")
    assert unit_view(fleet.store.get_unit("lift-a") or {}, time.time(), silence_s=60)["status"] == "online"

    dropped.drop()  # the broker notices the dead socket and publishes the LWT `offline`
    wait_until(lambda: (fleet.store.get_unit("lift-a") or {}).get("state") == "offline", timeout=15)

    later = time.time() + 61  # lift-b says nothing for longer than the silence limit
    assert unit_view(fleet.store.get_unit("lift-b") or {}, later, silence_s=60)["status"] == "silent"
    assert unit_view(fleet.store.get_unit("lift-b") or {}, later, silence_s=60)["online"] is False


def test_events_published_while_the_fleet_server_is_down_arrive_after_it_returns(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    first = start_fleet(mosquitto, db, client_id="fleet-durable")
    first.stop()  # the persistent session stays at the broker
    unit = make_unit("lift-009")
    events = [unit.alert(with_snapshot=False) for _ in range(5)]
    second = start_fleet(mosquitto, db, client_id="fleet-durable")
    try:
        wait_until(lambda: all(second.store.get_alert(e.event_id) for e in events))
    finally:
        second.stop()


def test_two_servers_on_a_shared_subscription_split_the_load_without_loss_or_duplicates(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    a = start_fleet(mosquitto, db, shared_group="fleet")
    b = start_fleet(mosquitto, db, shared_group="fleet")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="many-units")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        # One connection publishes for 40 units (an anonymous test broker has no ACL to stop it).
        events = [alert(f"lift-{i:03d}") for i in range(40) for _ in range(5)]
        for e in events:
            publisher.publish(unit_topic(e.unit_id, "events"), encode(e), qos=1)
        wait_until(lambda: a.store.count_events() == len(events), timeout=20)
        assert a.ingestor.topic_filter == "$share/fleet/liftguard/v1/units/+/#"
        got_a = counters(a).get("accepted_event", 0)
        got_b = counters(b).get("accepted_event", 0)
        assert got_a + got_b == len(events) == 200
        assert got_a > 20 and got_b > 20  # both servers did real work
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        a.stop()
        b.stop()
