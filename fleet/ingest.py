"""MQTT ingest: validate every message from the units, batch it into the store, acknowledge after commit.

Two threads do the work. paho's network thread only stamps each message and appends its raw bytes to
an in-memory inbox (a deque: no lock, no parsing), so it keeps up with the socket. The writer thread
takes the inbox in batches, checks and validates each message (cheapest checks first: topic and size,
the unit's rate limit, then pydantic), and applies the batch in one transaction. QoS 1 messages are
acknowledged to the broker only after their batch committed (paho `manual_ack`), so a crash between
receipt and commit makes the broker redeliver instead of losing the event.

Heartbeats (QoS 0, superseded by the next one) are coalesced: the latest per unit, plus the hourly
roll-up of all of them, is written every `heartbeat_flush_s` in one sorted multi-row upsert, not one
row per beat. Scale-out: several processes subscribe as `$share/<group>/...`; each batch locks unit
rows in unit-id order, so two writers never deadlock, and a deadlock or serialisation failure that
still happens is retried at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract.clips import CLIP_CHUNK_BYTES, decode_chunk, is_clip_id
from contract.commands import ConfigReportedPayload
from contract.errors import PayloadError
from contract.models import ModelReportedPayload
from contract.mqtt import (
    MAX_PAYLOAD_BYTES,
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
from contract.mqtt_client import new_client, tls_context
from contract.stats import percentile
from fleet.config import FleetSettings
from fleet.store import IngestBatch, Quarantined, Store
from fleet.store.clips import ClipPart

log = logging.getLogger(__name__)

SUBSCRIPTION = f"{PREFIX}/+/#"
_SNAPSHOT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JPEG_MAGIC = b"\xff\xd8\xff"
# Our own downlink topics come back to us through the `#` wildcard (MQTT forbids no_local on
# shared subscriptions), so they are recognised and skipped rather than counted as garbage.
# model/: the fleet's model chunks (downlink); the unit's answers under these prefixes are uplink.
_DOWNLINK_PREFIXES = ("cmd/", "config/", "model/")
_UPLINK_ANSWERS = ("config/reported", "model/reported")
_CLIP_CAP = CLIP_CHUNK_BYTES + 64  # one chunk and its header


def _downlink(suffix: str) -> bool:
    return suffix.startswith(_DOWNLINK_PREFIXES) and suffix not in _UPLINK_ANSWERS


class Rejected(PayloadError):
    """A message refused by ingest; `reason` is the counter it is tallied under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One validated uplink message, ready for the writer."""

    kind: str  # status | heartbeat | event | snapshot | cmd_result | config_reported | clip_part | model_reported
    unit_id: str
    body: Any
    received_at: float
    raw: str = ""
    snapshot_id: str = ""
    # Set when the message is valid but must not be stored as it is (a device clock outside the window):
    # the writer quarantines it with this reason instead.
    problem: str = ""


def classify(topic: str, payload: bytes, received_at: float) -> Message | None:
    """Validate one MQTT message against the v1 contract. None = not ours to store (downlink echo,
    cleared retained status); raises Rejected for anything a unit must not send."""
    try:
        unit_id, suffix = parse_topic(topic)
    except PayloadError as exc:
        raise Rejected("bad_topic", str(exc)) from None
    if _downlink(suffix):
        return None
    if suffix.startswith("clips/"):
        clip_id = suffix.removeprefix("clips/")
        if not is_clip_id(clip_id):
            raise Rejected("bad_topic", f"invalid clip id in {topic!r}")
        try:
            sha, index, count, data = decode_chunk(payload)
        except PayloadError as exc:
            raise Rejected("bad_clip", f"{topic}: {exc}") from None
        return Message("clip_part", unit_id, ClipPart(unit_id, clip_id, sha, index, count, data, received_at),
                       received_at)
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
        elif suffix == "model/reported":
            if not payload:
                return None  # a cleared retained message
            return Message("model_reported", unit_id, decode(ModelReportedPayload, payload), received_at)
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


def check_clock(message: Message, max_ahead_s: float, max_age_s: float) -> Message:
    """Events and config reports are ordered and dated by the device's `ts`: one outside
    [received_at - max_age_s, received_at + max_ahead_s] is kept aside (quarantined), not stored."""
    if message.kind not in ("event", "config_reported"):
        return message
    ts = float(message.body.ts)
    if ts > message.received_at + max_ahead_s:
        problem = f"ts {ts:.0f} is {ts - message.received_at:.0f} s ahead of the server clock (max {max_ahead_s:.0f})"
    elif ts < message.received_at - max_age_s:
        problem = f"ts {ts:.0f} is {message.received_at - ts:.0f} s behind the server clock (max {max_age_s:.0f})"
    else:
        return message
    return dataclasses.replace(message, problem=problem)


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
            return round(percentile(data, p * 100) * 1000, 2)

        return {"n": len(data), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                "max_ms": round(data[-1] * 1000, 2)}


class IngestStats:
    """Counters for accepted / rejected / duplicate / quarantined messages, commit latencies, and the last
    few rejections with their reasons (what an operator asks first: which unit, and why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: collections.Counter[str] = collections.Counter()
        self.e2e = LatencyWindow()  # device event ts -> committed (includes the broker hop)
        self.server = LatencyWindow()  # received by this server -> committed
        self.recent_rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.rate_limited_units: collections.Counter[str] = collections.Counter()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def count_many(self, counts: collections.Counter[str]) -> None:
        with self._lock:
            self.counters.update(counts)

    def rejected(self, reason: str, unit_id: str, detail: str, at: float) -> None:
        with self._lock:
            self.counters[f"rejected_{reason}"] += 1
            self.recent_rejections.append({"at": at, "unit_id": unit_id, "reason": reason, "detail": detail[:300]})

    def rate_limited(self, unit_id: str) -> None:
        with self._lock:
            self.counters["rejected_rate_limited"] += 1
            self.rate_limited_units[unit_id] += 1
            if len(self.rate_limited_units) > 10_000:
                self.rate_limited_units = collections.Counter(dict(self.rate_limited_units.most_common(100)))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            recent = list(self.recent_rejections)
            limited = dict(self.rate_limited_units.most_common(20))
        return {"counters": counters, "event_latency_e2e": self.e2e.summary(),
                "event_latency_server": self.server.summary(), "recent_rejections": recent,
                "rate_limited_units": limited}


class UnitBuckets:
    """A token bucket per unit: `rate` messages a second on average, `burst` at once. Checked before a
    message is parsed, so a flooding unit costs a dict lookup per message and leaves the rest alone."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_units: int = 200_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_units = max_units
        self._buckets: dict[str, list[float]] = {}  # unit -> [tokens, last refill]
        self._lock = threading.Lock()

    def allow(self, unit_id: str) -> bool:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(unit_id)
            if bucket is None:
                if len(self._buckets) >= self._max_units:
                    # Forget the units whose buckets have refilled: they lose nothing by it.
                    self._buckets = {u: b for u, b in self._buckets.items()
                                     if b[0] + (now - b[1]) * self.rate < self.burst}
                bucket = self._buckets[unit_id] = [self.burst, now]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                return False
            bucket[0] = tokens - 1.0
            return True


def prefilter(topic: str, size: int) -> tuple[str, str] | Rejected:
    """The checks that cost nothing: the topic names a unit, and the payload is within its size cap.
    Returns (unit_id, suffix) or the rejection; runs before the rate limit and before any parsing."""
    try:
        unit_id, suffix = parse_topic(topic)
    except PayloadError as exc:
        return Rejected("bad_topic", str(exc))
    if _downlink(suffix):
        return unit_id, suffix  # our own downlink (a model chunk is larger than any uplink cap): skipped
    cap = MAX_SNAPSHOT_BYTES if suffix.startswith("snapshots/") else _CLIP_CAP if suffix.startswith("clips/") \
        else MAX_PAYLOAD_BYTES
    if size > cap:
        return Rejected("too_large", f"{topic}: {size} bytes, over the {cap}-byte cap")
    return unit_id, suffix


class StoreDown(Exception):
    """The database does not answer: the batch waits (unacknowledged) and is retried whole."""


CommitListener = Callable[[list[EventPayload], IngestBatch], None]
# A message as the network thread hands it over: topic, payload, mid, qos, received_at.
_Raw = tuple[str, bytes, int, int, float]
_Item = tuple[Message, int, int]
# Retries of a transaction that lost a deadlock or a serialisation race (at once, not backing off:
# the other transaction has committed or is about to, so the retry finds the rows free).
_TRANSIENT_RETRIES = 8
_Rollup = dict[tuple[str, int], list[float]]
# Units per heartbeat-flush transaction: small enough that an alert arriving meanwhile waits for one short
# transaction (the writer takes new messages between chunks), large enough to amortise the commit.
_FLUSH_CHUNK = 500


class HeartbeatCoalescer:
    """QoS 0 heartbeats held back for up to `flush_s`: the latest per unit (what `units` shows) and the
    hourly roll-up of every one of them (what `heartbeat_hours` counts), so nothing but row writes is saved."""

    def __init__(self, flush_s: float, max_units: int) -> None:
        self.flush_s = flush_s
        self.max_units = max_units
        self.latest: dict[str, Message] = {}
        self.rollup: dict[tuple[str, int], list[float]] = {}
        self.since: float | None = None  # monotonic time of the oldest beat held
        self.beats = 0

    def add(self, message: Message, now: float) -> None:
        hb = message.body
        current = self.latest.get(message.unit_id)
        if current is None or current.received_at <= message.received_at:
            self.latest[message.unit_id] = message
        acc = self.rollup.setdefault((message.unit_id, int(message.received_at // 3600)), [0, 0.0, 0.0, 0])
        acc[0] += 1
        acc[1] += hb.fps
        acc[2] = max(acc[2], hb.inference_p95_ms)
        acc[3] += 0 if hb.camera == "online" else 1
        self.beats += 1
        if self.since is None:
            self.since = now

    def due(self, now: float) -> bool:
        return self.since is not None and (now - self.since >= self.flush_s or len(self.latest) >= self.max_units)

    def take(self) -> tuple[list[Message], dict[tuple[str, int], list[float]], int]:
        """Everything held, emptied: (latest beat per unit, sorted by unit id; roll-up; beats it stands for)."""
        latest = [self.latest[u] for u in sorted(self.latest)]
        taken = (latest, self.rollup, self.beats)
        self.latest, self.rollup, self.since, self.beats = {}, {}, None, 0
        return taken

    def put_back(self, latest: list[Message], rollup: dict[tuple[str, int], list[float]], beats: int,
                 now: float) -> None:
        """A flush that could not be written (database down) is merged back, newer beats winning."""
        for m in latest:
            current = self.latest.get(m.unit_id)
            if current is None or current.received_at < m.received_at:
                self.latest[m.unit_id] = m
        for key, acc in rollup.items():
            mine = self.rollup.setdefault(key, [0, 0.0, 0.0, 0])
            mine[0] += acc[0]
            mine[1] += acc[1]
            mine[2] = max(mine[2], acc[2])
            mine[3] += acc[3]
        self.beats += beats
        self.since = now if self.since is None else min(self.since, now)
# How often the writer applies snapshot retention (by age and total size).
_PRUNE_EVERY_S = 300.0


class Ingestor:
    """Subscribes to every unit's topics and feeds the store; also the fleet's command publisher."""

    def __init__(self, settings: FleetSettings, store: Store, on_commit: CommitListener | None = None) -> None:
        self.settings = settings
        self.store = store
        self.stats = IngestStats()
        self.buckets = UnitBuckets(settings.unit_rate_per_s, settings.unit_burst)
        self._listeners: list[CommitListener] = [on_commit] if on_commit else []
        # The network thread appends, the writer pops: deque operations are atomic, so no lock; `_wake`
        # is set when the writer should look (it is only touched when not already set).
        self._inbox: collections.deque[_Raw] = collections.deque()
        self._wake = threading.Event()
        self._received = 0  # messages appended (network thread)
        self._done = 0  # messages taken and finished (writer thread)
        self._held = HeartbeatCoalescer(settings.heartbeat_flush_every_s, settings.heartbeat_flush_units)
        self._flushing: list[Message] = []  # heartbeats being written, a chunk per writer round
        self._flushing_rollup: dict[str, _Rollup] = {}  # by unit
        self._flush_now = False  # drain(): write held heartbeats now
        self._closing = threading.Event()  # set once the network thread stopped: finish and exit
        self._recent_events: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._recent_max = 200_000
        # Snapshots that arrived before their event (another server may still be committing it).
        self._orphans: collections.OrderedDict[tuple[str, str], tuple[bytes, float, float]] = \
            collections.OrderedDict()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="fleet-writer", daemon=True)
        self.connected = threading.Event()
        # Health: when the batch being written arrived (oldest message), and whether writes fail now.
        self._batch_oldest: float | None = None
        self.write_failing_since: float | None = None
        self.last_write_error = ""
        self._last_prune = 0.0
        self._disconnected_at: float | None = None
        self.client = self._make_client()

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    @property
    def topic_filter(self) -> str:
        group = self.settings.shared_group
        return f"$share/{group}/{SUBSCRIPTION}" if group else SUBSCRIPTION

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        password = s.mqtt_password_file.read_text().strip() if s.mqtt_username and s.mqtt_password_file else None
        tls = tls_context(str(s.mqtt_ca) if s.mqtt_ca else None, str(s.mqtt_cert) if s.mqtt_cert else None,
                          str(s.mqtt_key) if s.mqtt_key else None) if s.mqtt_tls else None
        client = new_client(s.client_id, username=s.mqtt_username, password=password, ssl_context=tls,
                            reconnect_max_s=30, max_inflight=1000, manual_ack=True)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
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
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        self._closing.set()
        self._wake.set()
        if self._writer.is_alive():
            self._writer.join(timeout)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    def drain(self, timeout: float = 10.0) -> bool:
        """Block until everything received so far is committed, coalesced heartbeats included (tests
        and benchmarks)."""
        deadline = time.monotonic() + timeout
        target = self._received
        while time.monotonic() < deadline:
            if self._done >= target and not self._held.latest and not self._flushing:
                return True
            self._flush_now = True
            self._wake.set()
            time.sleep(0.01)
        return False

    def health(self, now: float | None = None) -> dict[str, Any]:
        """What /healthz reports about ingest: lag (seconds the oldest uncommitted message has waited),
        whether store writes fail, and the problems that make the server `degraded`."""
        now = time.time() if now is None else now
        oldest = self._batch_oldest
        try:  # the head of the inbox, when the writer is behind
            head: float | None = self._inbox[0][4]
        except IndexError:
            head = None
        waiting = [t for t in (oldest, head) if t is not None]
        lag = max(0.0, now - min(waiting)) if waiting else 0.0
        problems = []
        if not self.connected.is_set():
            problems.append("not connected to the MQTT broker")
        if self.write_failing_since is not None:
            problems.append(f"store writes failing since {now - self.write_failing_since:.0f} s: "
                            f"{self.last_write_error}")
        if lag > self.settings.max_ingest_lag_s:
            problems.append(f"ingest lags {lag:.1f} s (max {self.settings.max_ingest_lag_s:.0f})")
        return {"lag_s": round(lag, 3), "queued": len(self._inbox), "heartbeats_held": len(self._held.latest),
                "writes_ok": self.write_failing_since is None,
                "quarantined": self.stats.counters.get("quarantined", 0), "problems": problems}

    # -- paho callbacks (network thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the fleet server: %s", reason)
            return
        client.subscribe(self.topic_filter, qos=1)
        if self._disconnected_at is not None:
            log.warning("reconnected to the MQTT broker at %s:%s after %.0f s", self.settings.mqtt_host,
                        self.settings.mqtt_port, time.monotonic() - self._disconnected_at)
            self._disconnected_at = None
        log.info("connected to %s:%s, subscribed %s", self.settings.mqtt_host, self.settings.mqtt_port,
                 self.topic_filter)
        self.connected.set()

    def _on_connect_fail(self, _c: mqtt.Client, _ud: Any) -> None:
        if self._disconnected_at is None:
            self._disconnected_at = time.monotonic()
        log.error("cannot reach the MQTT broker at %s:%s (no connection for %.0f s); retrying",
                  self.settings.mqtt_host, self.settings.mqtt_port, time.monotonic() - self._disconnected_at)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self._disconnected_at = time.monotonic()
            log.error("lost the connection to the MQTT broker at %s:%s (%s); reconnecting with backoff",
                      self.settings.mqtt_host, self.settings.mqtt_port, reason)

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        # Network thread: stamp and hand over; every check and all parsing happen on the writer thread.
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time()))
        self._received += 1
        if not self._wake.is_set():
            self._wake.set()

    def _admit(self, topic: str, payload: bytes, received_at: float) -> Message | None:
        """Cheapest checks first: topic and size, then the unit's rate limit, and only then parsing."""
        first = prefilter(topic, len(payload))
        if isinstance(first, Rejected):
            self.stats.rejected(first.reason, "", str(first), received_at)
            return None
        unit_id, suffix = first
        if _downlink(suffix):
            return None  # our own commands, echoed by the `#` subscription: not the unit's
        if not self.buckets.allow(unit_id):
            self.stats.rate_limited(unit_id)
            return None
        try:
            message = classify(topic, payload, received_at)
        except Rejected as exc:
            self.stats.rejected(exc.reason, unit_id, str(exc), received_at)
            log.debug("rejected: %s", exc)
            return None
        if message is None:
            return None
        return check_clock(message, self.settings.max_clock_ahead_s, self.settings.max_event_age_s)

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
    def _take(self) -> list[_Raw]:
        """Wait (up to 0.5 s) for messages, give the batch window to fill, then take up to `batch_max`."""
        if not self._inbox:
            self._wake.clear()
            if not self._inbox:  # checked again after clearing: an append in between has set `_wake`
                self._wake.wait(0.5)
        if not self._inbox:
            return []
        if len(self._inbox) < self.settings.batch_max and self.settings.batch_window_ms > 0:
            time.sleep(self.settings.batch_window_ms / 1000)
        inbox, n = self._inbox, min(len(self._inbox), self.settings.batch_max)
        return [inbox.popleft() for _ in range(n)]

    def _admit_all(self, raw: list[_Raw]) -> list[_Item]:
        """Validate what the network thread handed over; acknowledge at once what will not be stored, hold
        QoS 0 heartbeats back for coalescing, and return the rest for this batch."""
        items: list[_Item] = []
        counts: collections.Counter[str] = collections.Counter()
        now = time.monotonic()
        coalesce = self._held.flush_s > 0
        for topic, payload, mid, qos, received_at in raw:
            message = self._admit(topic, payload, received_at)
            if message is None or (message.kind == "event" and self._seen_before(message.body.event_id)):
                if message is not None:
                    counts["duplicate_events"] += 1
                # Nothing to persist: acknowledge now, a redelivery would be rejected again anyway.
                if qos > 0:
                    self.client.ack(mid, qos)
                continue
            counts[f"accepted_{message.kind}"] += 1
            if coalesce and message.kind == "heartbeat" and qos == 0:
                self._held.add(message, now)
            else:
                items.append((message, mid, qos))
        self.stats.count_many(counts)
        return items

    def _write_loop(self) -> None:
        while True:
            self._maybe_prune()
            raw = self._take()
            closing = self._closing.is_set() and not self._inbox
            items = self._admit_all(raw)
            if items and not self._store_items(items):
                return  # stopping with the store down: the broker redelivers what we did not ack
            self._done += len(raw)
            now = time.monotonic()
            if not self._flushing and (self._held.due(now) or (self._held.latest and (closing or self._flush_now))):
                self._flushing, rollup, beats = self._held.take()
                for key, acc in rollup.items():
                    self._flushing_rollup.setdefault(key[0], {})[key] = acc
                self.stats.count("heartbeats_coalesced", beats - len(self._flushing))
            self._flush_now = False
            while self._flushing:
                if not self._flush_chunk():
                    return
                if not closing:
                    break  # one chunk per round: events in the inbox do not wait for the whole flush
            if closing and not self._held.latest:
                return

    def _flush_chunk(self) -> bool:
        """Write the next chunk of the heartbeats being flushed (sorted by unit id)."""
        chunk = self._flushing[:min(self.settings.batch_max, _FLUSH_CHUNK)]
        rollup = {k: v for m in chunk for k, v in self._flushing_rollup.get(m.unit_id, {}).items()}
        if self._commit(chunk, rollup) is None:
            return False  # stopping with the store down: QoS 0 heartbeats are not redelivered, nor missed
        del self._flushing[:len(chunk)]
        for m in chunk:
            self._flushing_rollup.pop(m.unit_id, None)
        self.stats.count("heartbeat_rows_written", len(chunk))
        return True

    def _store_items(self, items: list[_Item]) -> bool:
        """Commit one batch, then acknowledge its QoS 1 messages and tell the listeners."""
        messages = [m for m, _, _ in items]
        self._batch_oldest = min(m.received_at for m in messages)
        committed = self._commit(messages)
        if committed is None:
            return False
        new_events, batch = committed
        committed_at = time.time()
        self._batch_oldest = None
        for _message, mid, qos in items:
            if qos > 0:
                self.client.ack(mid, qos)
        if new_events:
            self.stats.count("stored_events", len(new_events))
            self.stats.e2e.add_many([max(0.0, committed_at - e.ts) for e in new_events])
        self.stats.server.add_many([committed_at - m.received_at for m in messages if m.kind == "event"])
        for listener in self._listeners:
            try:
                listener(new_events, batch)
            except Exception:  # a broken dashboard listener must never stop ingest
                log.exception("commit listener failed")
        return True

    def _commit(self, messages: list[Message], rollup: _Rollup | None = None
                ) -> tuple[list[EventPayload], IngestBatch] | None:
        """Store the messages; retried (with backoff) only while the database is down, never because of one
        message: a message the store refuses while the database answers is quarantined with the reason."""
        delay = 0.2
        while True:
            try:
                result = self._store_isolating(messages, rollup)
            except StoreDown as exc:
                self.stats.count("store_errors")
                if self.write_failing_since is None:
                    self.write_failing_since = time.time()
                self.last_write_error = str(exc)[:300]
                log.error("store write failed (%s); retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    log.error("stopping with %d uncommitted messages; the broker will redeliver", len(messages))
                    return None
                delay = min(delay * 2, 10.0)
                continue
            if self.write_failing_since is not None:
                log.warning("store writes work again after %.0f s", time.time() - self.write_failing_since)
            self.write_failing_since = None
            self.last_write_error = ""
            return result

    def _store_isolating(self, messages: list[Message], rollup: _Rollup | None = None
                         ) -> tuple[list[EventPayload], IngestBatch]:
        """One transaction for the batch; if it fails while the database answers, halves until each failing
        message stands alone, stores the rest, and quarantines the failing ones with their error."""
        set_aside = [(m, m.problem) for m in messages if m.problem]
        good = [m for m in messages if not m.problem]
        new_events: list[EventPayload] = []
        whole = self._batch_of(good, rollup=rollup)
        try:
            new_events = self._write(whole)
        except Exception as exc:
            self._raise_if_down(exc)
            whole = IngestBatch()
            new_events = self._bisect(good, set_aside, whole, rollup)
        if set_aside:
            rows = [Quarantined(m.unit_id, m.kind, reason, _quarantine_payload(m), m.received_at)
                    for m, reason in set_aside]
            try:
                self.store.quarantine(rows)
            except Exception as exc:
                self._raise_if_down(exc)
                # The database answers yet refuses even the quarantine row: log it and go on, never loop.
                self.stats.count("quarantine_failed", len(rows))
                for m, reason in set_aside:
                    log.error("dropped a %s from %s that could be neither stored (%s) nor quarantined (%s)",
                              m.kind, m.unit_id, reason, exc)
                return new_events, whole
            self.stats.count("quarantined", len(rows))
            for m, reason in set_aside:
                log.warning("quarantined a %s from %s: %s", m.kind, m.unit_id, reason)
        return new_events, whole

    def _bisect(self, messages: list[Message], set_aside: list[tuple[Message, str]],
                merged: IngestBatch, rollup: _Rollup | None = None) -> list[EventPayload]:
        if not messages:
            return []
        batch = self._batch_of(messages, with_orphans=False, rollup=rollup)
        try:
            new = self._write(batch)
        except Exception as exc:
            self._raise_if_down(exc)
            if len(messages) == 1:
                set_aside.append((messages[0], f"store refused it: {type(exc).__name__}: {exc}"[:1000]))
                return []
            half = len(messages) // 2
            return self._bisect(messages[:half], set_aside, merged, rollup) + \
                self._bisect(messages[half:], set_aside, merged, rollup)
        merged.snapshots += batch.snapshots
        merged.cmd_results += batch.cmd_results
        merged.orphan_snapshots += batch.orphan_snapshots
        return new

    def _raise_if_down(self, exc: Exception) -> None:
        try:
            self.store.query("SELECT 1 AS ok")
        except Exception as probe:
            raise StoreDown(f"{exc} (and the database does not answer: {probe})") from exc

    def _batch_of(self, messages: list[Message], with_orphans: bool = True,
                  rollup: _Rollup | None = None) -> IngestBatch:
        """The messages as one IngestBatch. `rollup`: the hourly heartbeat counts of coalesced beats (those
        of these messages' units go in; the messages' own heartbeats are then not counted again)."""
        batch = IngestBatch()
        for message in messages:
            _add_to_batch(batch, message, count_beats=rollup is None)
        if rollup is not None:
            units = {m.unit_id for m in messages}
            batch.rollup = {k: list(v) for k, v in rollup.items() if k[0] in units}
        if not with_orphans:
            return batch
        # Snapshots that came before their event get another chance with each batch, for a while.
        now = time.monotonic()
        for key, (data, at, since) in list(self._orphans.items()):
            if now - since > 120:
                del self._orphans[key]
                self.stats.count("snapshots_without_event")
            elif not any(s[0] == key[0] and s[1] == key[1] for s in batch.snapshots):
                batch.snapshots.append((key[0], key[1], data, at))
        return batch

    def _write(self, batch: IngestBatch) -> list[EventPayload]:
        quota = int(self.settings.snapshot_quota_mb * 1024 * 1024)
        clip_quota = int(self.settings.clip_quota_mb * 1024 * 1024)
        attempt = 0
        while True:
            try:
                new = self.store.write_batch(batch, unit_snapshot_quota=quota, unit_clip_quota=clip_quota)
                break
            except Exception as exc:
                # A lost deadlock / serialisation race: the other writer is done with the rows, so again
                # at once (a backoff here only adds latency for every message in the batch).
                if attempt >= _TRANSIENT_RETRIES or not self.store.is_transient(exc):
                    raise
                attempt += 1
                self.stats.count("write_retries_transient")
                log.info("transaction lost a race (%s); retrying at once", type(exc).__name__)
        self._count_clips(batch.clip_outcomes)
        stored = {(u, s) for u, s, _, _ in batch.snapshots} - {(u, s) for u, s, _, _ in batch.orphan_snapshots}
        for key in stored:
            self._orphans.pop(key, None)
        for unit, snap, data, at in batch.orphan_snapshots:
            key = (unit, snap)
            if key not in self._orphans:
                self._orphans[key] = (data, at, time.monotonic())
                # At most a few per unit and 64 in all: a unit cannot park its images in our memory.
                if sum(1 for k in self._orphans if k[0] == unit) > 4 or len(self._orphans) > 64:
                    self._orphans.popitem(last=False)
                    self.stats.count("snapshots_without_event")
        return new

    def _count_clips(self, outcomes: list[Any]) -> None:
        for o in outcomes:
            if o.outcome == "stored":
                self.stats.count("stored_clips")
                log.info("clip %s of %s stored: %s", o.clip_id, o.unit_id, o.detail)
            elif o.outcome in ("refused", "over_parts_cap", "expired"):
                self.stats.rejected(f"clip_{o.outcome}", o.unit_id, f"clip {o.clip_id}: {o.detail}", time.time())
                log.warning("clip %s of %s %s: %s", o.clip_id, o.unit_id, o.outcome, o.detail)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            gone = self.store.prune_snapshots(time.time() - self.settings.snapshot_max_age_days * 86400,
                                              int(self.settings.snapshot_total_mb * 1024 * 1024))
        except Exception as exc:  # retention can wait for the next round
            log.warning("snapshot retention failed: %s", exc)
            return
        if gone:
            log.info("snapshot retention removed %d snapshots", gone)
        try:
            self._count_clips(self.store.settle_clips(time.time(), int(self.settings.clip_quota_mb * 1024 * 1024)))
            gone = self.store.prune_clips(time.time() - self.settings.clip_max_age_days * 86400,
                                          int(self.settings.clip_total_mb * 1024 * 1024))
        except Exception as exc:
            log.warning("clip retention failed: %s", exc)
            return
        if gone:
            log.info("clip retention removed %d clips", gone)

    # -- commands (downlink) ------------------------------------------------------------------
    def publish_command(self, unit_id: str, name: str, command_id: str, args: dict[str, Any] | None = None) -> None:
        payload = CommandPayload(command_id=command_id, ts=time.time(), args=args or {})
        info = self.client.publish(unit_topic(unit_id, f"cmd/{name}"), encode(payload), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"could not publish command: {mqtt.error_string(info.rc)}")


def _quarantine_payload(message: Message) -> str:
    if message.kind == "snapshot":
        return f"<snapshot {message.snapshot_id}: {len(message.body)} bytes>"
    if message.kind == "clip_part":
        part = message.body
        return f"<clip {part.clip_id} part {part.index}/{part.count}: {len(part.data)} bytes>"
    if message.raw:
        return message.raw
    body = message.body
    return body.model_dump_json() if hasattr(body, "model_dump_json") else repr(body)


def _add_to_batch(batch: IngestBatch, message: Message, count_beats: bool = True) -> None:
    if message.kind == "status":
        batch.add_status(message.unit_id, message.body, message.received_at)
    elif message.kind == "heartbeat":
        batch.add_heartbeat(message.body, message.received_at, count=count_beats)
    elif message.kind == "event":
        batch.events.append((message.body, message.received_at, message.raw))
    elif message.kind == "snapshot":
        batch.snapshots.append((message.unit_id, message.snapshot_id, message.body, message.received_at))
    elif message.kind == "cmd_result":
        batch.cmd_results.append((message.unit_id, message.body, message.received_at))
    elif message.kind == "config_reported":
        batch.add_config_report(message.unit_id, message.body, message.received_at)
    elif message.kind == "clip_part":
        batch.clip_parts.append(message.body)
    elif message.kind == "model_reported":
        batch.model_reports.append((message.unit_id, message.body, message.received_at))
