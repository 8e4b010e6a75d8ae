"""The MQTT link: an EventSink that gets every alert to the fleet, whatever the network does.

`emit()` commits the event (and its snapshot, already anonymised by the pipeline) to the durable outbox and wakes the
publisher; it never waits for the network. One worker thread owns everything else: it hands
outbox rows to paho at QoS 1 in commit order with at most `window` awaiting PUBACK, deletes a
row only after its PUBACK, sends heartbeats, and answers fleet commands. paho's own thread does
the socket work, reconnects with bounded backoff and re-sends unacknowledged messages after a
reconnect; after a process restart the outbox is published again from its oldest row.

paho calls back with its internal locks held, so callbacks only append to deques and set an
Event: the worker never calls paho while paho may be waiting on the worker.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract.bounds import MAX_COUNTER
from contract.models import ModelReportedPayload
from contract.mqtt import MAX_SNAPSHOT_BYTES, EventPayload, HeartbeatPayload, StatusPayload, encode, unit_topic
from contract.mqtt_client import Will, new_client
from edge.config import Config
from edge.report import ha
from edge.report.clip_upload import ClipUploader
from edge.report.commands import CommandHandler, DeviceControl, SeenCommands
from edge.report.link_settings import LinkSettings
from edge.report.model_update import ModelUpdater
from edge.report.outbox import Message, Outbox

log = logging.getLogger(__name__)

_SAFE_REF = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ACCEPTED_RC = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # NO_CONN: sent on reconnect


class Counters(Protocol):
    """Where rejected commands etc. are counted (edge.report.health.Metrics fits)."""

    def inc(self, name: str, by: int = 1) -> None: ...


class MqttLink:
    """Delivers events, snapshots, heartbeats and status; executes fleet commands through `control`."""

    def __init__(self, settings: LinkSettings, outbox: Outbox, control: DeviceControl | None = None,
                 heartbeat: Callable[[], HeartbeatPayload] | None = None, counters: Counters | None = None,
                 seen: SeenCommands | None = None) -> None:
        """`seen`: executed command ids (persisted beside the outbox by from_config; in memory if None)."""
        self.settings = settings
        self.outbox = outbox
        self.handler = CommandHandler(control, snapshot_sink=self._store_snapshot, seen=seen) if control else None
        self._heartbeat = heartbeat
        self._counters = counters
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: deque[tuple[int, bool]] = deque()
        self._inbound: deque[tuple[str, bytes]] = deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id; worker thread only
        self._cursor = 0  # highest outbox row id handed to paho
        self._rewind_at: float | None = None
        self._connected = False
        self._fresh_connection = False
        self._subscribed = False
        self._relay: bool | None = None
        self._relay_published: bool | None = None
        self._last_desired: bytes | None = None
        self._software: str | None = None
        self._model_id: str | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self.stats = {"published": 0, "acked": 0, "nacked": 0, "connects": 0, "commands": 0}
        self.model_updater: ModelUpdater | None = None  # model rollout (attach_models)
        self.clip_uploader: ClipUploader | None = None  # event clips to the fleet (attach_clips)
        self.clip_losses: Callable[[], int] = lambda: 0  # the recorder's dropped + evicted clips (attach_clips)
        self._clip_mid: int | None = None  # the clip chunk awaiting PUBACK; worker thread only
        self._client = self._make_client()

    @classmethod
    def from_config(cls, cfg: Config, control: DeviceControl | None,
                    heartbeat: Callable[[], HeartbeatPayload] | None, counters: Counters | None = None) -> MqttLink:
        """The link the app uses: settings, credentials and outbox from `cfg.mqtt`. Call start(), later close()."""
        settings = LinkSettings.from_config(cfg)
        outbox = Outbox(cfg.mqtt.outbox_path, max_rows=cfg.mqtt.outbox_max_rows)
        seen = SeenCommands(Path(cfg.mqtt.outbox_path).with_name("commands.sqlite3")) if control else None
        return cls(settings, outbox, control, heartbeat, counters, seen)

    # --- topics -----------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        return unit_topic(self.settings.unit_id, suffix)

    def _status(self, state: str) -> bytes:
        s = self.settings
        return encode(StatusPayload.model_validate({
            "state": state, "ts": time.time() if state != "offline" else None, "software": self._software,
            "model_id": self._model_id,
            "site": s.site, "building": s.building, "elevator": s.elevator}))

    # --- lifecycle --------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = new_client(s.unit_id, username=s.username, password=s.password,
                            ssl_context=s.ssl_context() if s.tls else None,
                            will=Will(self.topic("status"), self._status("offline")),
                            reconnect_max_s=s.reconnect_max_s, max_inflight=s.window)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (never blocks on the network) and start publishing."""
        s = self.settings
        log.info("MQTT link for %s to %s:%s (tls=%s)", s.unit_id, s.host, s.port, s.tls)
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name="liftguard-link", daemon=True)
        self._worker.start()

    def close(self, drain_s: float = 2.0) -> None:
        """Give in-flight rows `drain_s` to be acknowledged, publish `stopped`, disconnect.

        Whatever is still undelivered stays in the outbox for the next start.
        """
        if self._closed:
            return
        self._closed = True
        if self._worker:
            if self._connected:
                self.wait_drained(drain_s)
            self._stopping.set()
            self._wake.set()
            self._worker.join(timeout=10)
            if self._connected:
                info = self._client.publish(self.topic("status"), self._status("stopped"), qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2)
                except (RuntimeError, ValueError):
                    log.warning("could not publish the stopped status")
            self._client.disconnect()
            self._client.loop_stop()
        self.outbox.close()

    # --- the EventSink side -----------------------------------------------------------------

    def emit(self, event: EventPayload, snapshot_jpeg: bytes | None = None) -> None:
        """Commit the event (and its snapshot) durably; publishing happens on the worker.

        The link carries pictures as they are: the pipeline anonymised them where it drew them
        (Pipeline._picture), the one owner of blurring, so the JPEG is never decoded again here.
        """
        if self._closed:
            log.error("event %s emitted after the link was closed; not queued", event.event_id)
            return
        snapshot, ref = self._prepare_snapshot(event, snapshot_jpeg)
        if snapshot is not None and event.snapshot != ref:
            event = event.model_copy(update={"snapshot": ref})
        messages = [Message(self.topic("events"), encode(event))]
        if snapshot is not None:
            messages.append(Message(self.topic(ref), snapshot, "snapshot"))
        self.outbox.put(messages)
        self._wake.set()

    def _prepare_snapshot(self, event: EventPayload, jpeg: bytes | None) -> tuple[bytes | None, str]:
        wanted = event.snapshot or ""
        ref = wanted if wanted.startswith("snapshots/") and _SAFE_REF.match(wanted[10:]) \
            else f"snapshots/{_safe_ref(event.event_id)}"
        if not jpeg:
            return None, ref
        if len(jpeg) > MAX_SNAPSHOT_BYTES:
            log.warning("snapshot of event %s is %s bytes, over the limit; dropped", event.event_id, len(jpeg))
            return None, ref
        return jpeg, ref

    def _store_snapshot(self, ref: str, jpeg: bytes) -> str:
        """SnapshotSink for the `snapshot` command (Pipeline.snapshot_jpeg, anonymised there): queued durably."""
        suffix = f"snapshots/{_safe_ref(ref)}"
        self.outbox.put([Message(self.topic(suffix), jpeg, "snapshot")])
        return suffix

    def set_relay_state(self, held: bool) -> None:
        """The app reports the door-hold relay; published (retained) for Home Assistant when enabled."""
        self._relay = held
        self._wake.set()

    # --- observation (tests, demo, heartbeat) -----------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout: float) -> bool:
        """Connected and, where commands are handled, subscribed to them."""
        return _poll(lambda: self._connected and (self._subscribed or not self.handler), timeout)

    def wait_drained(self, timeout: float) -> bool:
        """True once every committed row has been acknowledged by the broker."""
        return _poll(lambda: self.outbox.depth() == 0, timeout)

    def metrics(self) -> dict[str, int]:
        out = {**self.stats, "outbox_depth": self.outbox.depth(), "outbox_evicted": self.outbox.evicted(),
               "connected": int(self._connected), "inflight": len(self._inflight)}
        if self.handler:
            out.update({f"commands_{k}": v for k, v in self.handler.counts.items()})
        if self.clip_uploader is not None:
            out.update({f"clips_{k}": v for k, v in self.clip_uploader.counts.items()})
        return out

    # --- paho callbacks (paho's thread, paho's locks held: append and wake only) ------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        self._connected = True
        self._subscribed = False
        if self.handler:
            # Subscribe from the network thread, right after CONNACK: a command the fleet sends the
            # moment it sees us must not arrive before our subscription does.
            client.subscribe([(self.topic("cmd/+"), 1), (self.topic("config/desired"), 1),
                              (self.topic("model/data"), 1)])
        self._fresh_connection = True
        self._wake.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      props: Properties | None) -> None:
        self._subscribed = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       props: Properties | None) -> None:
        if self._connected and not self._stopping.is_set():
            log.warning("disconnected from the broker (%s); %s rows wait in the outbox", rc, self.outbox.depth())
        self._connected = False
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Properties | None) -> None:
        self._acks.append((mid, not rc.is_failure))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbound.append((message.topic, bytes(message.payload)))
        self._wake.set()

    # --- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        while True:
            wait = min(1.0, next_heartbeat - time.monotonic(), self._clip_wait())
            self._wake.wait(timeout=max(0.0, wait))
            self._wake.clear()
            try:
                self._settle_acks()
                if self._stopping.is_set():
                    return
                if self._fresh_connection:
                    self._fresh_connection = False
                    self._announce()
                self._serve_commands()
                if self._connected:
                    self._fill_window()
                    self._send_clip_chunk()
                    self._publish_relay()
                    if time.monotonic() >= next_heartbeat:
                        self._send_heartbeat()
                        next_heartbeat = time.monotonic() + self.settings.heartbeat_s
            except Exception:  # keep publishing whatever one step raised
                log.exception("MQTT link worker step failed")
                time.sleep(0.5)

    def _announce(self) -> None:
        """After every (re)connect: retained online, discovery, relay state (subscriptions: _on_connect)."""
        self.stats["connects"] += 1
        if self._software is None and self._heartbeat:
            self._software, self._model_id = self._identity()
        log.info("connected to the broker; %s rows to deliver", self.outbox.depth())
        self._client.publish(self.topic("status"), self._status("online"), qos=1, retain=True)
        if self.settings.home_assistant:
            for topic, payload in ha.discovery_messages(self.settings.unit_id, self._software):
                self._client.publish(topic, payload, qos=1, retain=True)
        self._relay_published = None
        if self.clip_uploader is not None:
            self._clip_mid = None
            self.clip_uploader.restart()

    def attach_clips(self, uploader: ClipUploader, losses: Callable[[], int] | None = None) -> None:
        """Event clips: uploaded from their folder on this worker, when no event waits (contract/clips.py);
        `losses`: the clips the recorder dropped or evicted, for the heartbeat's `clips_lost`."""
        self.clip_uploader = uploader
        if losses is not None:
            self.clip_losses = losses
        self._wake.set()

    def _clip_wait(self) -> float:
        """Seconds until a clip chunk may go; an acknowledgement or a new event wakes the worker anyway."""
        up = self.clip_uploader
        if up is None or not self._connected or self._clip_mid is not None or self._inflight:
            return 1.0
        return up.due_in() if self.outbox.depth() == 0 else 1.0

    def _send_clip_chunk(self) -> None:
        """At most one clip chunk in flight, and only while the event outbox is empty: alerts go first."""
        up = self.clip_uploader
        if up is None or self._clip_mid is not None or self._inflight or self.outbox.depth() > 0:
            return
        chunk = up.next_chunk()
        if chunk is None:
            return
        suffix, payload = chunk
        info = self._client.publish(self.topic(suffix), payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            up.restart()  # not connected after all: the clip starts again on the next connection
            return
        self._clip_mid = info.mid

    def _fill_window(self) -> None:
        if self._rewind_at is not None and not self._inflight and time.monotonic() >= self._rewind_at:
            self._rewind_at, self._cursor = None, 0  # retry refused rows from the oldest
        room = self.settings.window - len(self._inflight)
        if room <= 0 or self._rewind_at is not None:
            return
        for row in self.outbox.pending(after_id=self._cursor, limit=room):
            info = self._client.publish(row.topic, row.payload, qos=1)
            if info.rc not in _ACCEPTED_RC:
                log.warning("publish of outbox row %s failed (%s); retrying later", row.id, info.rc)
                return
            self._inflight[info.mid] = row.id
            self._cursor = row.id
            self.stats["published"] += 1

    def _settle_acks(self) -> None:
        delivered: list[int] = []
        while self._acks:
            mid, ok = self._acks.popleft()
            if mid == self._clip_mid and self.clip_uploader is not None:
                self._clip_mid = None
                self.clip_uploader.sent(ok)
                continue
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                continue  # status, result or heartbeat: not an outbox row
            if ok:
                delivered.append(row_id)
            else:  # e.g. not authorised: keep the row, retry after a pause rather than spin
                self.stats["nacked"] += 1
                log.error("broker refused outbox row %s; retrying in %ss", row_id, self.settings.reconnect_max_s)
                self._rewind_at = time.monotonic() + self.settings.reconnect_max_s
        if delivered:
            self.stats["acked"] += len(delivered)
            self.outbox.ack(delivered)

    def _send_heartbeat(self) -> None:
        if not self._heartbeat:
            return
        try:
            update: dict[str, Any] = {
                "outbox_depth": self.outbox.depth(), "outbox_evicted": self.outbox.evicted(),
                "outbox_snapshots_dropped": self.outbox.evicted_snapshots()}
            if self.clip_uploader is not None:
                counts = self.clip_uploader.counts
                update.update(clips_uploaded=min(counts["uploaded"], MAX_COUNTER),
                              clips_lost=min(counts["unreadable"] + self.clip_losses(), MAX_COUNTER))
            beat = self._heartbeat().model_copy(update=update)
        except Exception:
            log.exception("heartbeat source failed")
            return
        self._client.publish(self.topic("heartbeat"), encode(beat), qos=0)

    def _publish_relay(self) -> None:
        held = self._relay
        if self.settings.home_assistant and held is not None and held != self._relay_published:
            self._client.publish(ha.door_hold_topic(self.settings.unit_id), ha.door_hold_payload(held),
                                 qos=1, retain=True)
            self._relay_published = held

    def _serve_commands(self) -> None:
        while self._inbound and self.handler:
            topic, payload = self._inbound.popleft()
            suffix = topic.split("/", 4)[-1]
            if suffix == "config/desired":
                self._apply_desired(payload)
            elif suffix == "model/data":
                if self.model_updater is not None:
                    self.model_updater.chunk(payload)
            elif suffix.startswith("cmd/"):
                result = self.handler.handle(suffix[4:], payload)
                self.stats["commands"] += 1
                if not result.ok and self._counters:
                    self._counters.inc("mqtt_commands_rejected")
                self._client.publish(self.topic("cmd_result"), encode(result), qos=1)
                if result.ok and result.command == "set_config":
                    self._report_config()

    def attach_models(self, updater: ModelUpdater) -> None:
        """Model rollout: `cmd/model` offers go to `updater`, `model/data` chunks too, and its outcomes
        are published on `model/reported` (retained)."""
        self.model_updater = updater
        updater.report = self.publish_model_report
        if self.handler is not None:
            self.handler.model_offer = updater.offer

    def publish_model_report(self, report: ModelReportedPayload) -> None:
        self._client.publish(self.topic("model/reported"), encode(report), qos=1, retain=True)

    def _apply_desired(self, payload: bytes) -> None:
        assert self.handler is not None
        if not payload or payload == self._last_desired:
            return  # cleared, or the retained copy re-delivered on reconnect: already applied
        self._last_desired = payload
        report = self.handler.apply_desired(payload)
        if not report.ok and self._counters:
            self._counters.inc("mqtt_config_rejected")
        self._client.publish(self.topic("config/reported"), encode(report), qos=1, retain=True)

    def _report_config(self) -> None:
        assert self.handler is not None
        if self.handler.last_report:
            self._client.publish(self.topic("config/reported"), encode(self.handler.last_report),
                                 qos=1, retain=True)

    def _identity(self) -> tuple[str | None, str | None]:
        """Software version and model id for the status payload, from the app's heartbeat."""
        assert self._heartbeat is not None
        try:
            beat = self._heartbeat()
        except Exception:
            log.exception("heartbeat source failed")
            return None, None
        return beat.software, beat.model_id


def _safe_ref(ref: str) -> str:
    """A topic level from an id: MQTT wildcards or separators in it would break or redirect the publish."""
    return ref if _SAFE_REF.match(ref) else uuid.uuid5(uuid.NAMESPACE_URL, ref).hex


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
