"""contract.mqtt_client: the one client factory; its last will reaches the fleet when a client vanishes."""

from __future__ import annotations

import socket

from contract.mqtt_client import Will, new_client
from tests.edge.link_support import FleetSubscriber
from tests.support.mosquitto import MosquittoBroker


def test_a_vanished_clients_will_is_published_retained(mosquitto: MosquittoBroker) -> None:
    fleet = FleetSubscriber(mosquitto, ["liftguard/v1/units/u-will/#"], client_id="fleet-will")
    client = new_client("u-will", will=Will("liftguard/v1/units/u-will/status", b'{"state":"offline"}'))
    connected = []
    client.on_connect = lambda c, u, f, rc, p: connected.append(not rc.is_failure)
    try:
        client.connect("127.0.0.1", mosquitto.port, keepalive=5)
        client.loop_start()
        assert fleet.wait_for(lambda f: connected == [True], timeout=10)
        client.loop_stop()
        sock = client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # gone without DISCONNECT: the broker sends the will
        sock.close()
        assert fleet.wait_for(lambda f: f.payloads("/status") == [b'{"state":"offline"}'], timeout=20)
        late = FleetSubscriber(mosquitto, ["liftguard/v1/units/u-will/status"], client_id="fleet-late")
        try:  # retained: a subscriber that arrives later still learns the unit is offline
            assert late.wait_for(lambda f: f.payloads("/status") == [b'{"state":"offline"}'], timeout=10)
        finally:
            late.close()
    finally:
        fleet.close()
