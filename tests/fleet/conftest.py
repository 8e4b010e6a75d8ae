"""Fixtures for the fleet tests: stores on both engines, a running fleet server (real Mosquitto,
real uvicorn on a free port), and a scriptable test unit speaking the v1 contract."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from contract import samples
from contract.mqtt import (
    CommandPayload,
    CommandResultPayload,
    EventPayload,
    HeartbeatPayload,
    decode,
    encode,
    unit_topic,
)
from fleet.api import FleetContext, build_context, create_app
from fleet.config import load_settings
from fleet.ingest import Ingestor
from fleet.simulate import snapshot_jpeg
from fleet.store import Store
from tests.fleet.pgserver import PostgresServer, pg_bin_dir
from tests.support.mosquitto import MosquittoBroker

PASSWORD = "correct horse battery staple"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the OS package) driven by playwright-core; one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed: run `make test`, which installs it from the OS packages")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL binaries are absent (`make test` installs them)")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="liftguard-pg-"))).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    s.migrate()
    yield s
    s.close()


@dataclass
class RunningFleet:
    url: str
    ctx: FleetContext
    ingestor: Ingestor
    store: Store
    broker: MosquittoBroker
    server: uvicorn.Server
    thread: threading.Thread
    app: FastAPI

    def add_user(self, username: str, role: str = "manager", password: str = PASSWORD) -> None:
        self.ctx.auth.add_user(username, role, password)

    def login(self, username: str = "admin", password: str = PASSWORD) -> tuple[httpx.Client, str]:
        """An HTTP client holding the session cookie, and the session's CSRF token."""
        client = httpx.Client(base_url=self.url, timeout=10)
        response = client.post("/api/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return client, response.json()["csrf_token"]

    def stop(self) -> None:
        self.ctx.closing.set()
        self.server.should_exit = True
        self.thread.join(10)
        self.ingestor.stop()
        self.store.close()


def start_fleet(broker: MosquittoBroker, db_url: str, clock: Callable[[], float] = time.time,
                **overrides: Any) -> RunningFleet:
    """A fleet server as `serve` builds it; `overrides` are settings, `clock` says what time the API thinks it is."""
    # The HTTP socket is bound here and handed to uvicorn: a port picked, closed and bound again later can be
    # taken in between by whatever else runs on the machine.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = load_settings({"db": db_url, "mqtt_url": broker.url, "http_port": port,
                              "client_id": f"fleet-{uuid.uuid4().hex[:8]}", "batch_window_ms": 5, **overrides},
                             environ={})
    store = Store.open(settings.db, settings.tz)
    store.migrate()
    ctx = build_context(settings, store, clock)
    ingestor = Ingestor(settings, store, on_commit=ctx.notifier.on_commit)
    ctx.ingestor = ingestor
    ingestor.start()
    assert ingestor.wait_connected(10), "fleet ingest did not connect to the broker"
    app = create_app(ctx)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1, proxy_headers=False)  # as `serve` runs it
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10)
    fleet = RunningFleet(f"http://127.0.0.1:{port}", ctx, ingestor, store, broker, server, thread, app)
    fleet.add_user("admin", "admin")
    return fleet


@pytest.fixture
def fleet(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[RunningFleet]:
    running = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}")
    yield running
    running.stop()


@dataclass
class FakeUnit:
    """One device on the broker: publishes what a unit publishes and answers commands (ok=True)."""

    broker: MosquittoBroker
    unit_id: str
    site: str = "Harbour View"
    building: str = "Tower A"
    client: mqtt.Client = field(init=False)
    commands: list[tuple[str, CommandPayload]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.unit_id)
        self.client.will_set(unit_topic(self.unit_id, "status"), b"offline", qos=1, retain=True)
        self.client.on_message = self._on_command

    def connect(self) -> FakeUnit:
        self.client.connect("127.0.0.1", self.broker.port, keepalive=5)
        self.client.subscribe(unit_topic(self.unit_id, "cmd/#"), qos=1)
        self.client.loop_start()
        self.publish("status", json.dumps({"state": "online", "site": self.site, "building": self.building}),
                     qos=1, retain=True)
        return self

    def _on_command(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        name = msg.topic.rsplit("/", 1)[-1]
        command = decode(CommandPayload, bytes(msg.payload))
        self.commands.append((name, command))
        result = CommandResultPayload(command_id=command.command_id, command=name, ok=True, detail=f"{name} done",
                                      ts=time.time())
        client.publish(unit_topic(self.unit_id, "cmd_result"), encode(result), qos=1)

    def publish(self, suffix: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(unit_topic(self.unit_id, suffix), payload, qos=qos, retain=retain).wait_for_publish(5)

    def heartbeat(self, **changes: Any) -> HeartbeatPayload:
        fields: dict[str, Any] = dict(uptime_s=12.0, fps=9.5, inference_p95_ms=31.0, model_id="ebike-v3",
                                      software="1.4.2", site=self.site, building=self.building, elevator="Lift 1")
        hb = samples.heartbeat(self.unit_id, **{**fields, **changes})
        self.publish("heartbeat", encode(hb), qos=1)
        return hb

    def alert(self, with_snapshot: bool = True, **changes: Any) -> EventPayload:
        event_id = str(uuid.uuid4())
        fields: dict[str, Any] = dict(event_id=event_id, confidence=0.93,
                                      snapshot=f"snapshots/{event_id}" if with_snapshot else None)
        event = samples.alert(self.unit_id, **{**fields, **changes})
        self.publish("events", encode(event))
        if with_snapshot:
            self.publish(f"snapshots/{event_id}", snapshot_jpeg(f"{self.unit_id} test"))
        return event

    def drop(self) -> None:
        """Vanish without DISCONNECT, so the broker publishes the LWT."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_unit(mosquitto: MosquittoBroker) -> Iterator[Callable[..., FakeUnit]]:
    units: list[FakeUnit] = []

    def make(unit_id: str, **kwargs: Any) -> FakeUnit:
        unit = FakeUnit(mosquitto, unit_id, **kwargs).connect()
        units.append(unit)
        return unit

    yield make
    for unit in units:
        unit.close()
