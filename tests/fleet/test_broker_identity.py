"""Item 2 of issue 16: the shipped broker config binds a client's id to its certificate. A unit's
certificate that asks for the fleet server's client id (or another unit's) gets its own CN instead, so the
real session is neither dropped nor discarded and keeps its queued messages. Real Mosquitto, real TLS."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.fleet.conftest import wait_until
from tests.support.link_pki import Pki
from tests.support.mosquitto import MosquittoBroker

EVENTS = "liftguard/v1/units/+/events"


class Session:
    """An MQTT v5 client with a persistent session (clean_start false), as the fleet server connects."""

    def __init__(self, broker: MosquittoBroker, pki: Pki, cn: str, client_id: str, clean_start: bool = False) -> None:
        self.received: list[bytes] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.disconnects = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(pki.context(cn))
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append(bytes(m.payload))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, keepalive=5, clean_start=clean_start, properties=props)
        self.client.loop_start()
        assert self.connected.wait(5), f"{cn} could not connect"

    def _on_disconnect(self, *_: object) -> None:
        self.disconnects += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: MosquittoBroker, pki: Pki, cn: str, topic: str, n: int) -> None:
    sender = Session(broker, pki, cn, f"{cn}-sender", clean_start=True)
    for i in range(n):
        sender.client.publish(topic, f"message {i}".encode(), qos=1).wait_for_publish(5)
    sender.close()


@pytest.mark.parametrize(("victim_cn", "victim_id", "subscription", "sender", "topic"), [
    # the fleet server's session, queueing a unit's events
    ("fleet", "liftguard-fleet", EVENTS, "lift-7", "liftguard/v1/units/lift-7/events"),
    # a unit's session, queueing the fleet's commands to it
    ("lift-1", "lift-1", "liftguard/v1/units/lift-1/cmd/#", "fleet", "liftguard/v1/units/lift-1/cmd/release"),
])
def test_a_unit_certificate_cannot_take_over_another_session(
        pki: Pki, broker: MosquittoBroker, victim_cn: str, victim_id: str, subscription: str, sender: str,
        topic: str) -> None:
    victim = Session(broker, pki, victim_cn, victim_id)
    victim.client.subscribe(subscription, qos=1)
    assert victim.subscribed.wait(5)
    victim.close()  # offline: its session at the broker queues what arrives meanwhile
    _publish(broker, pki, sender, topic, 5)
    # The takeover: lift-2's certificate asks for the victim's client id with a clean start, which
    # (without the binding) replaces the victim's session and discards its queue.
    Session(broker, pki, "lift-2", victim_id, clean_start=True).close()
    back = Session(broker, pki, victim_cn, victim_id)
    try:
        wait_until(lambda: len(back.received) >= 5, timeout=10)
        assert sorted(back.received) == [f"message {i}".encode() for i in range(5)]
    finally:
        back.close()


def test_the_broker_names_a_client_by_its_certificate_whatever_id_it_asks_for(
        pki: Pki, broker: MosquittoBroker) -> None:
    fleet = Session(broker, pki, "fleet", "liftguard-fleet")
    rogue = Session(broker, pki, "lift-2", "liftguard-fleet", clean_start=True)
    try:
        time.sleep(0.5)
        assert fleet.disconnects == 0  # the real fleet session was not kicked off
        log = broker.log_path.read_text()
        assert "as lift-2 " in log and "u'lift-2'" in log
    finally:
        rogue.close()
        fleet.close()
