"""MQTT ingest: validate every message from the units, batch it into the store, acknowledge after commit.

Two threads do the work: paho's network thread parses and validates (cheap, pydantic), and one
writer thread applies batches in single transactions (the expensive part, amortised). QoS 1
messages are acknowledged to the broker only after their batch committed (paho `manual_ack`), so a
crash between receipt and commit makes the broker redeliver instead of losing the event.
"""

from __future__ import annotations

import collections
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract.commands import ConfigReportedPayload
from contract.errors import PayloadError
from contract.mqtt import (
    MAX_SNAPSHOT_BYTES,
    PREFIX,
    CommandPayload,
    CommandResultPayload,
    EventPayload,
    HeartbeatPayload,
    StatusPayload,
    decode,
    encode,
    parse_topic,
    unit_topic,
)
from fleet.config import FleetSettings
from fleet.store import IngestBatch, Store

log = logging.getLogger(__name__)

SUBSCRIPTION = f"{PREFIX}/+/#"
_SNAPSHOT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JPEG_MAGIC = b"\xff\xd8\xff"
# Our own downlink topics come back to us through the `#` wildcard (MQTT forbids no_local on
# shared subscriptions), so they are recognised and skipped rather than counted as garbage.
_DOWNLINK_PREFIXES = ("cmd/", "config/")


class Rejected(PayloadError):
    """A message refused by ingest; `reason` is the counter it is tallied under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One validated uplink message, ready for the writer."""

    kind: str  # status | heartbeat | event | snapshot | cmd_result | config_reported
    unit_id: str
    body: Any
    received_at: float
    raw: str = ""
    snapshot_id: str = ""


def classify(topic: str, payload: bytes, received_at: float) -> Message | None:
    """Validate one MQTT message against the v1 contract. None = not ours to store (downlink echo,
    cleared retained status); raises Rejected for anything a unit must not send."""
    try:
        unit_id, suffix = parse_topic(topic)
    except PayloadError as exc:
        raise Rejected("bad_topic", str(exc)) from None
    if suffix.startswith(_DOWNLINK_PREFIXES) and suffix != "config/reported":
        return None
    if suffix.startswith("snapshots/"):
        snapshot_id = suffix.removeprefix("snapshots/")
        if not _SNAPSHOT_ID_RE.match(snapshot_id):
            raise Rejected("bad_topic", f"invalid snapshot id in {topic!r}")
        if len(payload) > MAX_SNAPSHOT_BYTES:
            raise Rejected("bad_snapshot", f"snapshot too large ({len(payload)} bytes)")
        if not payload.startswith(_JPEG_MAGIC):
            raise Rejected("bad_snapshot", "snapshot is not a JPEG")
        return Message("snapshot", unit_id, payload, received_at, snapshot_id=snapshot_id)
    try:
        if suffix == "status":
            if not payload:
                return None  # a cleared retained message
            return Message("status", unit_id, _decode_status(payload), received_at)
        body: HeartbeatPayload | EventPayload | CommandResultPayload
        if suffix == "heartbeat":
            body = decode(HeartbeatPayload, payload)
            kind = "heartbeat"
        elif suffix == "events":
            body = decode(EventPayload, payload)
            kind = "event"
        elif suffix == "cmd_result":
            return Message("cmd_result", unit_id, decode(CommandResultPayload, payload), received_at)
        elif suffix == "config/reported":
            # No unit_id in this payload: the topic (vouched for by the broker ACL) names the unit.
            return Message("config_reported", unit_id, decode(ConfigReportedPayload, payload), received_at)
        else:
            raise Rejected("unknown_topic", f"unknown topic suffix {suffix!r}")
    except Rejected:
        raise
    except PayloadError as exc:
        raise Rejected("bad_payload", f"{topic}: {exc}") from None
    # The topic is what the broker ACL vouches for; a body claiming another unit is a spoof or a bug.
    if body.unit_id != unit_id:
        raise Rejected("unit_mismatch", f"{topic}: payload unit_id {body.unit_id!r} differs from topic")
    return Message(kind, unit_id, body, received_at, raw=payload.decode())


def _decode_status(payload: bytes) -> StatusPayload:
    """`status` is a bare word (`online`, and the LWT `offline`) or a JSON StatusPayload."""
    word = payload.strip()
    if word in (b"online", b"offline", b"stopped"):
        return StatusPayload(state=word.decode())  # type: ignore[arg-type]
    return decode(StatusPayload, payload)


class LatencyWindow:
    """The last `size` latency samples (seconds); percentiles on demand."""

    def __init__(self, size: int = 200_000) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add_many(self, values: list[float]) -> None:
        with self._lock:
            self._samples.extend(values)

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def summary(self) -> dict[str, float | int]:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return {"n": 0}

        def pct(p: float) -> float:
            return round(data[min(len(data) - 1, int(p * len(data)))] * 1000, 2)

        return {"n": len(data), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                "max_ms": round(data[-1] * 1000, 2)}


class IngestStats:
    """Counters for accepted / rejected / duplicate messages and commit latencies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: collections.Counter[str] = collections.Counter()
        self.e2e = LatencyWindow()  # device event ts -> committed (includes the broker hop)
        self.server = LatencyWindow()  # received by this server -> committed

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"counters": counters, "event_latency_e2e": self.e2e.summary(),
                "event_latency_server": self.server.summary()}


CommitListener = Callable[[list[EventPayload], IngestBatch], None]


class Ingestor:
    """Subscribes to every unit's topics and feeds the store; also the fleet's command publisher."""

    def __init__(self, settings: FleetSettings, store: Store, on_commit: CommitListener | None = None) -> None:
        self.settings = settings
        self.store = store
        self.stats = IngestStats()
        self._listeners: list[CommitListener] = [on_commit] if on_commit else []
        self._queue: queue.Queue[tuple[Message | None, int, int]] = queue.Queue()
        self._recent_events: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._recent_max = 200_000
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="fleet-writer", daemon=True)
        self.connected = threading.Event()
        self.client = self._make_client()

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    @property
    def topic_filter(self) -> str:
        group = self.settings.shared_group
        return f"$share/{group}/{SUBSCRIPTION}" if group else SUBSCRIPTION

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.settings.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if self.settings.mqtt_username:
            password = (self.settings.mqtt_password_file.read_text().strip()
                        if self.settings.mqtt_password_file else None)
            client.username_pw_set(self.settings.mqtt_username, password)
        if self.settings.mqtt_tls:
            client.tls_set(ca_certs=str(self.settings.mqtt_ca) if self.settings.mqtt_ca else None,
                           certfile=str(self.settings.mqtt_cert) if self.settings.mqtt_cert else None,
                           keyfile=str(self.settings.mqtt_key) if self.settings.mqtt_key else None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._writer.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # A persistent session: QoS 1 events published while we restart wait at the broker.
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 65535
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._stop.set()
        self._queue.put((None, 0, 0))
        self._writer.join(timeout)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    def drain(self, timeout: float = 10.0) -> bool:
        """Block until everything received so far is committed (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # -- paho callbacks (network thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the fleet server: %s", reason)
            return
        client.subscribe(self.topic_filter, qos=1)
        log.info("connected to %s:%s, subscribed %s", self.settings.mqtt_host, self.settings.mqtt_port,
                 self.topic_filter)
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff", reason)

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            message = classify(msg.topic, bytes(msg.payload), time.time())
        except Rejected as exc:
            self.stats.count(f"rejected_{exc.reason}")
            log.debug("rejected: %s", exc)
            message = None
        if message is None or (message.kind == "event" and self._seen_before(message.body.event_id)):
            if message is not None:
                self.stats.count("duplicate_events")
            # Nothing to persist: acknowledge now, a redelivery would be rejected again anyway.
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        self.stats.count(f"accepted_{message.kind}")
        self._queue.put((message, msg.mid, msg.qos))

    def _seen_before(self, event_id: str) -> bool:
        # Cheap first line of dedupe; the events primary key is the authoritative one (and the
        # only one that works across servers and restarts).
        if event_id in self._recent_events:
            return True
        self._recent_events[event_id] = None
        if len(self._recent_events) > self._recent_max:
            self._recent_events.popitem(last=False)
        return False

    # -- writer thread ------------------------------------------------------------------------
    def _collect(self) -> list[tuple[Message | None, int, int]]:
        try:
            first = self._queue.get(timeout=0.5)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + self.settings.batch_window_ms / 1000
        while len(items) < self.settings.batch_max:
            remaining = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _write_loop(self) -> None:
        while True:
            items = self._collect()
            if not items:
                if self._stop.is_set():
                    return
                continue
            batch = IngestBatch()
            for message, _, _ in items:
                if message is not None:
                    _add_to_batch(batch, message)
            new_events = self._commit(batch)
            committed_at = time.time()
            for message, mid, qos in items:
                if message is not None and qos > 0:
                    self.client.ack(mid, qos)
            if new_events:
                self.stats.count("stored_events", len(new_events))
                self.stats.e2e.add_many([max(0.0, committed_at - e.ts) for e in new_events])
            self.stats.server.add_many([committed_at - m.received_at for m, _, _ in items
                                        if m is not None and m.kind == "event"])
            for listener in self._listeners:
                try:
                    listener(new_events, batch)
                except Exception:  # a broken dashboard listener must never stop ingest
                    log.exception("commit listener failed")
            for _ in items:
                self._queue.task_done()
            if any(m is None for m, _, _ in items) and self._stop.is_set():
                return

    def _commit(self, batch: IngestBatch) -> list[Any]:
        delay = 0.2
        while True:
            try:
                return self.store.write_batch(batch)
            except Exception as exc:
                # Unacknowledged messages stay the broker's responsibility; retry rather than drop.
                self.stats.count("store_errors")
                log.error("store write failed (%s); retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    log.error("stopping with an uncommitted batch of %d; the broker will redeliver", len(batch))
                    return []
                delay = min(delay * 2, 10.0)

    # -- commands (downlink) ------------------------------------------------------------------
    def publish_command(self, unit_id: str, name: str, command_id: str, args: dict[str, Any] | None = None) -> None:
        payload = CommandPayload(command_id=command_id, ts=time.time(), args=args or {})
        info = self.client.publish(unit_topic(unit_id, f"cmd/{name}"), encode(payload), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"could not publish command: {mqtt.error_string(info.rc)}")


def _add_to_batch(batch: IngestBatch, message: Message) -> None:
    if message.kind == "status":
        batch.add_status(message.unit_id, message.body, message.received_at)
    elif message.kind == "heartbeat":
        batch.add_heartbeat(message.body, message.received_at)
    elif message.kind == "event":
        batch.events.append((message.body, message.received_at, message.raw))
    elif message.kind == "snapshot":
        batch.snapshots.append((message.unit_id, message.snapshot_id, message.body, message.received_at))
    elif message.kind == "cmd_result":
        batch.cmd_results.append((message.unit_id, message.body, message.received_at))
    elif message.kind == "config_reported":
        batch.add_config_report(message.unit_id, message.body, message.received_at)

