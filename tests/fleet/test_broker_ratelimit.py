"""Item 3 of issue 16 at the broker: the rate-limit plugin (config/mosquitto/ratelimit/) caps what one
client can push at the fleet server, so a flooding unit's excess never reaches the one connection all
units share. Real Mosquitto with the plugin loaded, real fleet server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fleet.conftest import FakeUnit, RunningFleet, start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker, ratelimit_config

RATE, BURST = 5, 50


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    # The test fleet servers connect with ids fleet-xxxxxxxx (anonymous listener: the id is the key).
    broker = MosquittoBroker(tmp_path / "broker", extra_config=ratelimit_config(RATE, BURST, exempt="fleet")).start()
    yield broker
    broker.stop()


def test_a_flooding_unit_is_capped_at_the_broker_and_keeps_its_connection(
        limited_broker: MosquittoBroker, tmp_path: Path) -> None:
    watcher_got: list[str] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda c, u, m: watcher_got.append(m.topic)
    watcher.connect("127.0.0.1", limited_broker.port)
    watcher.subscribe("#", qos=1)
    watcher.loop_start()
    assert subscribed.wait(5)
    noisy = FakeUnit(limited_broker, "lift-noisy").connect()  # its retained `status` is message 1
    quiet = FakeUnit(limited_broker, "lift-quiet").connect()
    try:
        acks = [noisy.client.publish("liftguard/v1/units/lift-noisy/events", b"{}", qos=1) for _ in range(1000)]
        for info in acks:
            info.wait_for_publish(10)  # every message acknowledged: the unit is not stalled
        quiet.publish("events", b"{}", qos=1)
        wait_until(lambda: "liftguard/v1/units/lift-quiet/events" in watcher_got, timeout=10)
        passed = sum(t == "liftguard/v1/units/lift-noisy/events" for t in watcher_got)
        assert BURST - 1 <= passed <= BURST + 10  # the burst (less the status), plus a few seconds of rate
        assert not any(t.startswith("$liftguard/") for t in watcher_got)  # `#` does not match the diversion
        assert noisy.client.is_connected()
        log = limited_broker.log_path.read_text()
        assert "liftguard_ratelimit: lift-noisy is over 5 messages/s" in log
    finally:
        noisy.close()
        quiet.close()
        watcher.loop_stop()


def test_good_units_arrive_during_a_flood_and_the_fleet_sees_only_the_burst(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker",
                             extra_config=ratelimit_config(RATE, BURST, exempt="")).start()
    fleet: RunningFleet = start_fleet(broker, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        noisy, quiet = FakeUnit(broker, "lift-noisy").connect(), FakeUnit(broker, "lift-quiet").connect()
        for _ in range(1000):
            noisy.client.publish("liftguard/v1/units/lift-noisy/events", b'{"not": "an event"}', qos=1)
        good = [quiet.alert(with_snapshot=False) for _ in range(3)]
        wait_until(lambda: all(fleet.store.get_alert(e.event_id) for e in good), timeout=20)
        counters = fleet.ingestor.stats.counters
        # What reached the fleet from the flood is bounded by the broker, not by the fleet's own bucket.
        assert counters["rejected_bad_payload"] + counters["rejected_rate_limited"] <= BURST + 20
        noisy.close()
        quiet.close()
    finally:
        fleet.stop()
        broker.stop()


def test_an_exempt_fleet_server_may_publish_beyond_the_limit(limited_broker: MosquittoBroker) -> None:
    got: list[str] = []
    subscribed = threading.Event()
    unit = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lift-1")
    unit.on_subscribe = lambda *_: subscribed.set()
    unit.on_message = lambda c, u, m: got.append(m.topic)
    unit.connect("127.0.0.1", limited_broker.port)
    unit.subscribe("liftguard/v1/units/lift-1/cmd/#", qos=1)
    unit.loop_start()
    assert subscribed.wait(5)
    fleet = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet")
    fleet.connect("127.0.0.1", limited_broker.port)
    fleet.loop_start()
    try:
        for info in [fleet.publish("liftguard/v1/units/lift-1/cmd/release", b"{}", qos=1) for _ in range(300)]:
            info.wait_for_publish(10)
        wait_until(lambda: len(got) == 300, timeout=10)
    finally:
        fleet.loop_stop()
        unit.loop_stop()
