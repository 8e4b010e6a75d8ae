"""Simulated units speaking the v1 contract through a real broker, many per process.

Each unit is its own MQTT connection with its own LWT, as a real device is (the broker ACL and the
offline detection depend on that). Thousands of paho clients are driven from one thread through a
selector instead of paho's thread-per-client loop: 12k threads would measure the simulator, not
the fleet server.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import random
import selectors
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import paho.mqtt.client as mqtt

from contract import samples
from contract.errors import PayloadError
from contract.mqtt import (
    CommandPayload,
    CommandResultPayload,
    RelayState,
    decode,
    encode,
    parse_topic,
    unit_topic,
)
from contract.mqtt_client import Will, new_client

log = logging.getLogger(__name__)

SOFTWARE = "liftguard-sim/0.1.0"
MODEL_ID = "sim-ebike-v1"


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    units: int = 10
    prefix: str = "sim"
    sites: int = 0  # 0: one site per ~50 units
    heartbeat_s: float = 30.0
    alert_rate: float = 0.0  # e-bike alerts per second across the whole fleet
    alert_start_s: float = 0.0  # seconds after all units connected before alerts begin
    alert_duration_s: float | None = None  # None: until the end
    duration_s: float = 60.0  # after all units connected
    connect_rate: float = 2000.0  # new connections per second (the broker's listen backlog is small)
    keepalive_s: int = 60
    seed: int = 1


@dataclass
class SimUnit:
    unit_id: str
    site: str
    building: str
    elevator: str
    client: mqtt.Client
    started: float = 0.0
    connected: bool = False
    blocking_enabled: bool = True
    relay: RelayState = "released"
    # The socket registered with the selector: paho drops its own reference when it closes a failed
    # socket, and a closed fd left registered would collide with the next socket given that number.
    registered: socket.socket | None = None


@dataclass
class SimReport:
    counters: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)
    connect_s: float = 0.0
    cpu_s: float = 0.0  # the simulator's own CPU after every unit connected (benchmarks subtract it)
    run_from: float = 0.0  # wall clock: the load ran from here (all units connected) ...
    run_to: float = 0.0  # ... to here (before waiting for the last acknowledgements)

    def as_dict(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "events_published": len(self.event_ids),
                "connect_s": round(self.connect_s, 2), "cpu_s": round(self.cpu_s, 2),
                "run_from": self.run_from, "run_to": self.run_to}


def snapshot_jpeg(text: str = "LiftGuard simulated snapshot") -> bytes:
    """A small real JPEG (an e-bike-ish outline) so the dashboard has something to show.

    Drawn with OpenCV where it is installed; a fleet-only install (no OpenCV) sends the packaged
    fleet/sample_snapshot.jpg, the same outline without the caption."""
    try:
        import cv2
        import numpy as np
    except ImportError:
        return resources.files("fleet").joinpath("sample_snapshot.jpg").read_bytes()

    img = np.full((180, 320, 3), 235, np.uint8)
    cv2.circle(img, (90, 120), 35, (40, 40, 40), 4)
    cv2.circle(img, (230, 120), 35, (40, 40, 40), 4)
    cv2.line(img, (90, 120), (150, 70), (0, 90, 200), 5)
    cv2.line(img, (150, 70), (230, 120), (0, 90, 200), 5)
    cv2.putText(img, text[:40], (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 160), 1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    if not ok:
        raise RuntimeError("could not encode the simulated snapshot")
    return bytes(buf.tobytes())


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.report = SimReport()
        self.rng = random.Random(config.seed)
        self.selector = selectors.DefaultSelector()
        self.snapshot = snapshot_jpeg()
        self.units = [self._make_unit(i) for i in range(config.units)]
        self._by_client: dict[int, SimUnit] = {}
        self._acked_mids: dict[int, set[int]] = {}

    def _make_unit(self, i: int) -> SimUnit:
        per_site = 50
        n_sites = self.config.sites or max(1, (self.config.units + per_site - 1) // per_site)
        site_no = i % n_sites
        unit_id = f"{self.config.prefix}-{i:05d}"
        will = Will(unit_topic(unit_id, "status"), json.dumps({"state": "offline"}))
        client = new_client(unit_id, v5=False, will=will, max_inflight=100)
        unit = SimUnit(unit_id, site=f"Site {site_no:03d}", building=f"Building {site_no:03d}-{(i // n_sites) % 4}",
                       elevator=f"Lift {i // (n_sites * 4) + 1}", client=client)
        client.user_data_set(unit)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return unit

    # -- paho callbacks -----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, unit: SimUnit, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.report.counters["connect_refused"] += 1
            return
        unit.connected = True
        unit.started = time.time()
        client.subscribe(unit_topic(unit.unit_id, "cmd/#"), qos=1)
        status = {"state": "online", "ts": time.time(), "software": SOFTWARE, "model_id": MODEL_ID,
                  "site": unit.site, "building": unit.building, "elevator": unit.elevator}
        client.publish(unit_topic(unit.unit_id, "status"), json.dumps(status), qos=1, retain=True)

    def _on_publish(self, _c: mqtt.Client, unit: SimUnit, mid: int, _rc: Any, _p: Any) -> None:
        self.report.counters["puback"] += 1

    def _on_message(self, client: mqtt.Client, unit: SimUnit, msg: mqtt.MQTTMessage) -> None:
        """Answer commands the way a device does: apply, then report on `cmd_result`."""
        try:
            _, suffix = parse_topic(msg.topic)
            command = decode(CommandPayload, bytes(msg.payload))
        except PayloadError:
            self.report.counters["bad_command"] += 1
            return
        name = suffix.removeprefix("cmd/")
        ok, detail = True, ""
        if name == "disable":
            unit.blocking_enabled = False
        elif name == "enable":
            unit.blocking_enabled = True
        elif name == "release":
            detail = "released" if unit.relay == "held" else "nothing held"
            unit.relay = "released"
        else:
            ok, detail = False, f"unsupported by the simulator: {name}"
        result = CommandResultPayload(command_id=command.command_id, command=name, ok=ok, detail=detail,
                                      ts=time.time())
        client.publish(unit_topic(unit.unit_id, "cmd_result"), encode(result), qos=1)
        self.report.counters[f"command_{name}"] += 1

    # -- what a unit sends --------------------------------------------------------------------
    def heartbeat(self, unit: SimUnit) -> None:
        now = time.time()
        hb = samples.heartbeat(unit.unit_id, ts=now, uptime_s=now - unit.started, inference_p50_ms=18.0,
                               inference_p95_ms=24.0, relay=unit.relay, blocking_enabled=unit.blocking_enabled,
                               model_id=MODEL_ID, software=SOFTWARE, site=unit.site, building=unit.building,
                               elevator=unit.elevator)
        unit.client.publish(unit_topic(unit.unit_id, "heartbeat"), encode(hb), qos=0)
        self.report.counters["heartbeats"] += 1

    def alert(self, unit: SimUnit) -> str:
        """One e-bike incident start with its snapshot; returns the event id."""
        event_id = str(uuid.uuid4())
        kind = "ebike_blocked" if unit.blocking_enabled else "blocking_disabled"
        now = time.time()
        event = samples.alert(unit.unit_id, event_id=event_id, type=kind, ts=now,
                              confidence=round(self.rng.uniform(0.6, 0.99), 3), snapshot=f"snapshots/{event_id}")
        unit.client.publish(unit_topic(unit.unit_id, "events"), encode(event), qos=1)
        unit.client.publish(unit_topic(unit.unit_id, f"snapshots/{event_id}"), self.snapshot, qos=1)
        self.report.event_ids.append(event_id)
        self.report.counters["alerts"] += 1
        return event_id

    # -- the loop -----------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            unit: SimUnit = key.data
            rc = unit.client.loop_read(10)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._drop(unit, f"read {mqtt.error_string(rc)}")
            elif unit.client.want_write():
                unit.client.loop_write()

    def _drop(self, unit: SimUnit, why: str) -> None:
        if unit.connected:
            self.report.counters["disconnects"] += 1
            log.debug("%s lost its connection: %s", unit.unit_id, why)
        unit.connected = False
        self._unregister(unit)

    def _unregister(self, unit: SimUnit) -> None:
        if unit.registered is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(unit.registered)
            unit.registered = None

    def _register(self, unit: SimUnit, sock: socket.socket) -> None:
        self._unregister(unit)
        stale = self.selector.get_map().get(sock.fileno())
        if stale is not None:  # a socket paho closed under another unit: its number is reused now
            self._drop(stale.data, "socket closed by the client")
        self.selector.register(sock, selectors.EVENT_READ, unit)
        unit.registered = sock

    def connect_all(self) -> None:
        t0 = time.monotonic()
        interval = 1.0 / self.config.connect_rate
        for i, unit in enumerate(self.units):
            try:
                unit.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
            except OSError as exc:
                self.report.counters["connect_errors"] += 1
                log.warning("%s could not connect: %s", unit.unit_id, exc)
                continue
            sock = unit.client.socket()
            if isinstance(sock, socket.socket):
                self._register(unit, sock)
            lag = t0 + (i + 1) * interval - time.monotonic()
            self._pump(max(0.0, lag))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(u.connected for u in self.units):
            self._pump(0.05)
        self.report.connect_s = time.monotonic() - t0
        self.report.counters["connected"] = sum(u.connected for u in self.units)

    def run(self) -> SimReport:
        cfg = self.config
        self.connect_all()
        cpu0 = time.process_time()
        start = time.monotonic()
        self.report.run_from = time.time()
        end = start + cfg.duration_s
        # Heartbeats spread evenly over the period, as a real fleet's boot times are.
        beats = [(start + self.rng.uniform(0, cfg.heartbeat_s), i) for i in range(len(self.units))]
        heapq.heapify(beats)
        alert_from = start + cfg.alert_start_s
        alert_until = min(end, alert_from + cfg.alert_duration_s) if cfg.alert_duration_s is not None else end
        next_alert = alert_from
        next_misc = start
        misc_cursor = 0
        while (now := time.monotonic()) < end:
            while beats and beats[0][0] <= now:
                due, i = heapq.heappop(beats)
                if self.units[i].connected:
                    self.heartbeat(self.units[i])
                heapq.heappush(beats, (due + cfg.heartbeat_s, i))
            if cfg.alert_rate > 0:
                while next_alert <= now and next_alert < alert_until:
                    unit = self.units[self.rng.randrange(len(self.units))]
                    if unit.connected:
                        self.alert(unit)
                    next_alert += 1.0 / cfg.alert_rate
            if now >= next_misc:
                # keep-alive pings for a slice of the clients each tick, all of them every ~5 s
                step = max(1, len(self.units) // 50)
                for unit in self.units[misc_cursor:misc_cursor + step]:
                    if unit.connected:
                        unit.client.loop_misc()
                misc_cursor = (misc_cursor + step) % max(1, len(self.units))
                next_misc = now + 0.1
            wake = min(beats[0][0] if beats else end, next_alert if next_alert < alert_until else end, next_misc, end)
            self._pump(max(0.0, min(0.05, wake - time.monotonic())))
        self.report.run_to = time.time()
        self._settle()
        self.report.cpu_s = time.process_time() - cpu0
        return self.report

    def _settle(self, timeout: float = 15.0) -> None:
        """Wait until every QoS 1 publish is acknowledged by the broker, so `events_published` is
        exactly what the broker took responsibility for."""
        # paho has no public "in-flight count"; `_out_messages` holds QoS>0 messages not yet acknowledged.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = sum(len(u.client._out_messages) for u in self.units if u.connected)
            if pending == 0:
                break
            self._pump(0.05)
        self.report.counters["unacked_at_end"] = sum(len(u.client._out_messages) for u in self.units)

    def stop(self, graceful: bool = True) -> None:
        """graceful: publish `stopped` and disconnect; otherwise drop sockets so the LWT fires."""
        for unit in self.units:
            if not unit.connected:
                continue
            if graceful:
                unit.client.publish(unit_topic(unit.unit_id, "status"), json.dumps({"state": "stopped"}),
                                    qos=1, retain=True)
                unit.client.disconnect()
            else:
                sock = unit.client.socket()
                if sock is not None:
                    sock.close()
            self._drop(unit, "stopped")
        self.selector.close()
