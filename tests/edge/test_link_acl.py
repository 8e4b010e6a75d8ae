"""The shipped fleet broker config (config/mosquitto/): TLS with client certificates, CN = unit id,
and an ACL that confines every unit to its own topics while the fleet account sees all of them."""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.report.link import MqttLink
from edge.report.outbox import Outbox
from tests.edge.link_support import FleetSubscriber, heartbeat_of, make_event, settings_for
from tests.support.link_pki import Pki
from tests.support.mosquitto import MosquittoBroker


class Client:
    """A bare MQTT v5 client that records reason codes, to see exactly what the broker granted."""

    def __init__(self, broker: MosquittoBroker, ctx: ssl.SSLContext, client_id: str) -> None:
        self.connack: ReasonCode | None = None
        self.subacks: list[ReasonCode] = []
        self.pubacks: list[ReasonCode] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.event = threading.Event()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.tls_set_context(ctx)
        c.on_connect = lambda cl, u, f, rc, p: self._set("connack", rc)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self._extend(self.subacks, rcs)
        c.on_publish = lambda cl, u, mid, rc, p: self._extend(self.pubacks, [rc])
        c.on_message = lambda cl, u, m: self.messages.append(m)
        try:
            c.connect("127.0.0.1", broker.port, keepalive=5)
        except OSError:
            return  # refused during the TLS handshake
        c.loop_start()

    def _set(self, name: str, value: ReasonCode) -> None:
        setattr(self, name, value)
        self.event.set()

    def _extend(self, into: list[ReasonCode], codes: list[ReasonCode]) -> None:
        into.extend(codes)
        self.event.set()

    def connected(self, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connack is not None:
                return not self.connack.is_failure
            time.sleep(0.02)
        return False

    def wait(self, what: list[ReasonCode], n: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        deadline = time.monotonic() + timeout
        while len(what) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return what

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fleet_tls(pki: Pki) -> object:
    ctx = pki.context("fleet")
    return lambda client: client.tls_set_context(ctx)


def test_a_unit_delivers_events_over_tls_to_a_shared_fleet_subscription(pki: Pki, broker: MosquittoBroker,
                                                                         tmp_path: Path) -> None:
    ctx = pki.context("fleet")
    fleet = FleetSubscriber(broker, ["$share/fleet/liftguard/v1/units/+/events"], client_id="fleet-1",
                            tls=lambda c: c.tls_set_context(ctx))
    cert, key = pki.fleet_ca.issue("unit-a")
    settings = settings_for(broker, tls=True, ca_file=str(pki.fleet_ca.cert_path), cert_file=str(cert),
                            key_file=str(key))
    link = MqttLink(settings, Outbox(tmp_path / "outbox.db"), None, heartbeat_of())
    link.start()
    event = make_event()
    link.emit(event)
    assert fleet.wait_for(lambda f: f.event_ids() == {event.event_id}, 10)
    link.close()
    fleet.close()


def test_a_unit_cannot_publish_under_another_units_topics(pki: Pki, broker: MosquittoBroker) -> None:
    ctx = pki.context("fleet")
    fleet = FleetSubscriber(broker, ["liftguard/v1/units/#"], client_id="fleet-1",
                            tls=lambda c: c.tls_set_context(ctx))
    unit_a = Client(broker, pki.context("unit-a"), "unit-a")
    assert unit_a.connected()
    unit_a.client.publish("liftguard/v1/units/unit-b/events", b'{"forged": true}', qos=1)
    unit_a.client.publish("liftguard/v1/units/unit-a/events", b'{"own": true}', qos=1)
    assert fleet.wait_for(lambda f: bool(f.payloads("/events")), 5)
    time.sleep(0.3)
    assert [json.loads(p) for p in fleet.payloads("/events")] == [{"own": True}]
    unit_a.close()
    fleet.close()


def test_a_unit_cannot_read_another_units_topics(pki: Pki, broker: MosquittoBroker) -> None:
    """Mosquitto 2.0 grants the SUBACK and enforces `read` on every delivery instead: unit A subscribed
    to unit B's subtree (and to a wildcard over all units) receives only its own messages."""
    unit_a = Client(broker, pki.context("unit-a"), "unit-a")
    assert unit_a.connected()
    unit_a.client.subscribe([("liftguard/v1/units/unit-b/#", 1), ("liftguard/v1/units/+/cmd/#", 1)])
    unit_a.wait(unit_a.subacks, 2)
    fleet = Client(broker, pki.context("fleet"), "fleet-1")
    assert fleet.connected()
    fleet.client.publish("liftguard/v1/units/unit-b/cmd/release", b"for b", qos=1)
    fleet.client.publish("liftguard/v1/units/unit-b/events", b"b's event", qos=1)
    fleet.client.publish("liftguard/v1/units/unit-a/cmd/release", b"for a", qos=1)
    fleet.wait(fleet.pubacks, 3)
    time.sleep(0.5)
    assert [m.payload for m in unit_a.messages] == [b"for a"]
    unit_a.close()
    fleet.close()


@pytest.mark.parametrize("how", ["rogue CA", "expired"])
def test_a_certificate_from_another_ca_or_expired_is_refused(pki: Pki, broker: MosquittoBroker, how: str) -> None:
    ctx = pki.context("unit-a", ca=pki.rogue_ca) if how == "rogue CA" else pki.context("unit-a", expired=True)
    intruder = Client(broker, ctx, "unit-a")
    assert not intruder.connected(timeout=2)
    intruder.close()


def test_a_client_without_a_certificate_is_refused(pki: Pki, broker: MosquittoBroker) -> None:
    intruder = Client(broker, ssl.create_default_context(cafile=pki.fleet_ca.cert_path), "unit-a")
    assert not intruder.connected(timeout=2)
    intruder.close()
