"""Helpers for the link tests: a fleet-side subscriber with a persistent session, events, a fake device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import samples
from contract.mqtt import EventPayload, HeartbeatPayload
from edge.config import Config, merge_fragment
from edge.report.link_settings import LinkSettings
from tests.support.mosquitto import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]


def settings_for(broker: MosquittoBroker, unit_id: str = "unit-a", **overrides: Any) -> LinkSettings:
    base: dict[str, Any] = {"unit_id": unit_id, "host": "127.0.0.1", "port": broker.port, "keepalive_s": 5,
                            "heartbeat_s": 30.0, "reconnect_max_s": 1.0}
    return LinkSettings(**{**base, **overrides})


def make_event(unit_id: str = "unit-a", n: int = 0) -> EventPayload:
    return samples.alert(unit_id, incident_id=f"incident-{n:04d}")


def heartbeat_of(unit_id: str = "unit-a") -> Callable[[], HeartbeatPayload]:
    def beat() -> HeartbeatPayload:
        return samples.heartbeat(unit_id, model_id="test-model", software="0.1.0-test")
    return beat


class FleetSubscriber:
    """Stands in for the fleet server: a persistent MQTT v5 session, so messages published while it
    is disconnected (broker restart) are queued for it and nothing is lost on the observer's side."""

    def __init__(self, broker: MosquittoBroker, topics: list[str], client_id: str = "fleet-test",
                 tls: Callable[[mqtt.Client], None] | None = None, username: str | None = None,
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._extra = on_message
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        if tls:
            tls(self.client)
        if username:
            self.client.username_pw_set(username)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", broker.port, keepalive=5, clean_start=False, properties=props)
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)
        if self._extra:
            self._extra(msg)

    def payloads(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [bytes(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def event_ids(self) -> set[str]:
        return {json.loads(p)["event_id"] for p in self.payloads("/events")}

    def wait_for(self, condition: Callable[[FleetSubscriber], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FakeControl:
    """A DeviceControl that records what the fleet changed."""

    def __init__(self) -> None:
        self.config = Config()
        self.calls: list[tuple[str, Any]] = []
        self.holding = True
        self.frame: bytes | None = None

    def release_hold(self, reason: str) -> bool:
        self.calls.append(("release_hold", reason))
        was, self.holding = self.holding, False
        return was

    def set_blocking(self, enabled: bool) -> None:
        self.calls.append(("set_blocking", enabled))

    def test_alarm(self) -> None:
        self.calls.append(("test_alarm", None))

    def snapshot_jpeg(self) -> bytes | None:
        self.calls.append(("snapshot_jpeg", None))
        return self.frame

    def apply_config(self, fragment: dict[str, Any]) -> dict[str, Any]:
        new = merge_fragment(self.config, fragment)  # raises ConfigError before anything changes
        self.calls.append(("apply_config", fragment))
        self.config = new
        return {"policy": new.policy.model_dump(mode="json"), "blocking_enabled": new.blocking_enabled}


def new_command(args: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"command_id": uuid.uuid4().hex, "ts": time.time(), "args": args or {}}).encode()


def spawn_device(broker_port: int, outbox: Path, *args: str) -> subprocess.Popen[str]:
    """Run tests/edge/link_device.py: a tiny device process that raises events through MqttLink."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.edge.link_device", "--port", str(broker_port),
                             "--outbox", str(outbox), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE)


def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 15.0) -> str:
    """The first stdout line of `proc` starting with `prefix` (its remainder)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"device exited (rc={proc.poll()}) before printing {prefix!r}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"device did not print {prefix!r} within {timeout}s")
