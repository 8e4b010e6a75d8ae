"""Clip upload on the unit (issue 17; contract/clips.py): what goes, in which order, and what stays."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from contract import samples
from contract.clips import CLIP_CHUNK_BYTES, decode_chunk
from contract.mqtt import unit_topic
from contract.mqtt_client import new_client
from edge.config import parse_config
from edge.report.clip_upload import REFUSED_BACKOFF_S, ClipUploader
from edge.report.link import MqttLink
from tests.support.clips import clip_zip
from tests.support.mosquitto import MosquittoBroker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def put_clip(folder: Path, ts: float, reason: str = "hold", frames: int = 60) -> tuple[Path, bytes]:
    folder.mkdir(exist_ok=True)
    clip_id, data = clip_zip("lift-1", "incident-1" if reason == "hold" else None, frames=frames,
                             size=(640, 360), reason=reason)
    path = folder / f"{ts:013.3f}-{reason}-{clip_id[:12]}.zip"
    path.write_bytes(data)
    return path, data


def drain(up: ClipUploader, clock: FakeClock) -> list[tuple[str, bytes]]:
    """Everything the uploader sends while every chunk is acknowledged at once."""
    sent = []
    for _ in range(1000):
        chunk = up.next_chunk()
        if chunk is None:
            if up.pending() == 0:
                return sent
            clock.now += up.due_in()
            continue
        assert up.next_chunk() is None  # one chunk in flight, never two
        sent.append(chunk)
        up.sent(True)
    raise AssertionError("the uploader never finished")


def test_hold_clips_go_oldest_first_in_order_and_leave_the_disk_near_misses_stay(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    newer, newer_data = put_clip(clips, 200.0)
    older, older_data = put_clip(clips, 100.0)
    near, _ = put_clip(clips, 150.0, reason="near_miss")
    clock = FakeClock()
    up = ClipUploader(clips, interval_s=0.2, clock=clock)
    sent = drain(up, clock)
    by_clip: dict[str, list[tuple[str, int, int, bytes]]] = {}
    order = []
    for suffix, payload in sent:
        assert len(payload) <= CLIP_CHUNK_BYTES + 40
        by_clip.setdefault(suffix, []).append(decode_chunk(payload))
        if suffix not in order:
            order.append(suffix)
    assert len(order) == 2
    first, second = (by_clip[s] for s in order)
    for parts, data in ((first, older_data), (second, newer_data)):
        assert [p[1] for p in parts] == list(range(len(parts))) and len(parts) >= 2
        assert b"".join(p[3] for p in parts) == data
        assert {p[0] for p in parts} == {hashlib.sha256(data).hexdigest()}
    assert not older.exists() and not newer.exists() and near.exists()
    assert up.counts["uploaded"] == 2 and up.counts["chunks"] == len(sent)


def test_chunks_are_paced_and_a_refusal_backs_off_then_resends_the_same_chunk(tmp_path: Path) -> None:
    put_clip(tmp_path / "clips", 100.0)
    clock = FakeClock()
    up = ClipUploader(tmp_path / "clips", interval_s=0.5, clock=clock)
    first = up.next_chunk()
    assert first is not None
    up.sent(True)
    assert up.next_chunk() is None and up.due_in() == pytest.approx(0.5)  # not before interval_s
    clock.now += 0.5
    second = up.next_chunk()
    assert second is not None and decode_chunk(second[1])[1] == 1
    up.sent(False)  # the broker refused it
    assert up.counts["refused"] == 1 and up.due_in() == pytest.approx(REFUSED_BACKOFF_S)
    clock.now += REFUSED_BACKOFF_S
    again = up.next_chunk()
    assert again == second


def test_a_reconnect_starts_the_clip_again_and_an_unreadable_clip_is_removed_and_counted(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    path, _ = put_clip(clips, 100.0)
    torn = clips / "0000000050.000-hold-deadbeef0000.zip"
    torn.write_bytes(b"PK\x03\x04 torn by a power cut")
    clock = FakeClock()
    up = ClipUploader(clips, interval_s=0.1, clock=clock)
    first = up.next_chunk()
    assert first is not None and not torn.exists() and up.counts["unreadable"] == 1
    up.sent(True)
    clock.now += 1
    assert up.next_chunk() is not None
    up.restart()  # connection lost with the chunk in flight
    assert up.next_chunk() == first
    assert path.exists()


def test_the_link_sends_events_first_and_clip_chunks_only_when_its_outbox_is_empty(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """A real broker: an alert queued while a clip waits reaches the broker before any chunk of the clip."""
    clips = tmp_path / "clips"
    path, data = put_clip(clips, 100.0)
    received: list[tuple[str, bytes]] = []
    watcher = new_client(f"watch-{uuid.uuid4().hex[:8]}")
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, bytes(msg.payload)))

    watcher.on_message = on_message
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe([(unit_topic("lift-1", "events"), 1), (unit_topic("lift-1", "clips/+"), 1),
                       (unit_topic("lift-1", "heartbeat"), 0)])
    watcher.loop_start()
    assert subscribed.wait(30)
    cfg = parse_config({"unit": {"id": "lift-1"}, "mqtt": {"url": mosquitto.url, "heartbeat_s": 1,
                                                            "outbox_path": str(tmp_path / "outbox.sqlite3")}})
    link = MqttLink.from_config(cfg, None, lambda: samples.heartbeat("lift-1"))
    alerts = [samples.alert("lift-1") for _ in range(3)]
    for event in alerts:  # queued before the link even connects
        link.emit(event)
    uploader = ClipUploader(clips, interval_s=0.05)
    link.attach_clips(uploader, losses=lambda: 2)  # the recorder dropped or evicted two
    link.start()
    try:
        deadline = time.monotonic() + 60
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists(), "the clip was not uploaded"
        topics = [t for t, _ in received]
        first_chunk = next(i for i, t in enumerate(topics) if "/clips/" in t)
        assert sum(1 for t in topics[:first_chunk] if t.endswith("/events")) == len(alerts)
        parts = sorted((decode_chunk(p) for t, p in received if "/clips/" in t and p.startswith(b"LGC1")),
                       key=lambda p: p[1])
        assert b"".join(p[3] for p in parts) == data
        assert link.metrics()["clips_uploaded"] == 1

        def beat_after_upload() -> dict[str, Any] | None:
            beats = [json.loads(p) for t, p in received if t.endswith("/heartbeat")]
            return next((b for b in beats if b.get("clips_uploaded") == 1), None)

        deadline = time.monotonic() + 30
        while beat_after_upload() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        beat = beat_after_upload()
        assert beat is not None and beat["clips_lost"] == 2  # the fleet sees what the unit lost
    finally:
        link.close()
        watcher.disconnect()
        watcher.loop_stop()
