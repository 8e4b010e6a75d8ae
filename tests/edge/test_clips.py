"""Event clips on the device (issue 17): a ring buffer around each hold, ≤ 640 px, blurred, capped on disk."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from contract import samples
from edge.config import ClipsConfig
from edge.decide.detect import Detection
from edge.report.clips import Clip, ClipRecorder, _Shot
from edge.run.cli import main
from tests.support.onnx_models import brightness_model


def write_clip(folder: Path, pattern: str, size: tuple[int, int] = (1280, 720)) -> Path:
    folder.mkdir()
    w, h = size
    for i, c in enumerate(pattern):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((h, w, 3), 250 if c == "#" else 5, np.uint8))
    return folder


def test_a_replayed_hold_leaves_a_clip_from_2_s_before_to_3_s_after(tmp_path: Path) -> None:
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    clip = write_clip(tmp_path / "clip", "." * 30 + "#" * 30 + "." * 50)
    clips_dir = tmp_path / "clips"
    config = tmp_path / "config.yaml"
    config.write_text("unit: {id: clip-test}\nactuators: {voice: {mode: none}}\n"
                      "events: {jsonl_path: '', snapshot_dir: ''}\n"
                      f"clips: {{enabled: true, dir: '{clips_dir}', near_miss_per_hour: 0}}\n")
    events_out = tmp_path / "events.jsonl"
    assert main(["replay", str(clip), "--fps", "10", "--config", str(config), "--model", str(model),
                 "--events-out", str(events_out)]) == 0
    start = next(e for e in map(json.loads, events_out.read_text().splitlines())
                 if e["type"] == "ebike_blocked" and e["phase"] == "start")
    (stored,) = sorted(clips_dir.glob("*.zip"))
    with zipfile.ZipFile(stored) as zf:
        meta = json.loads(zf.read("clip.json"))
        first = cv2.imdecode(np.frombuffer(zf.read(meta["frames"][0]["file"]), np.uint8), cv2.IMREAD_COLOR)
    assert meta["reason"] == "hold" and meta["incident_id"] == start["incident_id"]
    assert meta["trigger_ts"] == pytest.approx(start["ts"])
    times = [f["t"] for f in meta["frames"]]
    assert times[0] == pytest.approx(-2.0) and times[-1] == pytest.approx(3.0)
    assert len(times) == 51  # 10 fps, both ends included
    assert first.shape[1] == 640 and first.shape[0] == 360  # 1280x720 scaled to 640 px wide
    bright = [f for f in meta["frames"] if f["t"] >= 0 and f["t"] < 2.5]
    assert all(f["detections"] and f["detections"][0]["cls"] == "ebike" for f in bright)
    assert max(f["detections"][0]["box"][2] for f in bright) <= 640  # boxes in the clip's pixels


def shot(ts: float, image: np.ndarray, detections: list[Detection] | None = None) -> _Shot:
    return _Shot(ts, image, detections or [], 1.0)


def test_people_are_blurred_before_a_clip_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    person = Detection((200.0, 100.0, 320.0, 400.0), 0.9, "person")
    recorder = ClipRecorder(ClipsConfig(dir=str(tmp_path)), "u1", ("ebike",))
    path = recorder.write(Clip("c1" * 16, "hold", 0.0, "u1", None, [shot(0.0, image, [person])]))  # ids: 32 hex
    recorder.close()
    with zipfile.ZipFile(path) as zf:
        stored = cv2.imdecode(np.frombuffer(zf.read("frames/000.jpg"), np.uint8), cv2.IMREAD_COLOR)
    head = (slice(100, 160), slice(200, 320))
    elsewhere = (slice(400, 480), slice(0, 100))
    assert stored[head].std() < image[head].std() / 3  # the head region is pixelated ...
    assert stored[head].std() < stored[elsewhere].std() / 2  # ... the rest is still the (noisy) picture


def test_the_disk_cap_evicts_the_oldest_clips_and_counts_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    recorder = ClipRecorder(ClipsConfig(dir=str(tmp_path), max_mb=1), "u1", ("ebike",))
    for i in range(6):
        frames = [shot(i + j / 10, rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for j in range(3)]
        recorder.write(Clip(f"{i:x}" * 32, "hold", float(i), "u1", None, frames))
    recorder.close()
    kept = sorted(tmp_path.glob("*.zip"))
    assert sum(p.stat().st_size for p in kept) <= 1024 * 1024
    assert recorder.counts["evicted"] == 6 - len(kept) > 0
    assert "5" * 12 in kept[-1].name  # the newest stays


def test_a_busy_writer_never_holds_up_the_frame_loop(tmp_path: Path) -> None:
    release = threading.Event()
    recorder = ClipRecorder(ClipsConfig(dir=str(tmp_path), pre_s=0.2, post_s=0.5, near_miss_per_hour=0), "u1",
                            ("ebike",), queue_size=1)
    recorder.write = lambda clip: release.wait(30) and tmp_path  # type: ignore[method-assign,assignment,return-value]
    image = np.zeros((480, 640, 3), np.uint8)
    started = time.monotonic()
    t = 0.0
    for _ in range(4):  # four holds, each a clip; the writer is stuck on the first
        start = samples.alert("u1", ts=t)
        for k in range(8):
            recorder.observe(t, image, [], [start] if k == 0 else [], holding=True)
            t += 0.1
    assert time.monotonic() - started < 5  # no observe waited for the writer
    assert recorder.counts["dropped_busy"] >= 2  # one being written, one queued, the rest dropped and counted
    release.set()
    recorder.close()


def test_near_misses_are_sampled_at_most_as_often_as_configured(tmp_path: Path) -> None:
    recorder = ClipRecorder(ClipsConfig(dir=str(tmp_path), pre_s=0.2, post_s=0.5, near_miss_per_hour=2), "u1",
                            ("ebike",), threshold=lambda _cls: 0.6)
    image = np.zeros((480, 640, 3), np.uint8)
    weak = [Detection((10.0, 10.0, 100.0, 100.0), 0.45, "ebike")]  # between the floor (0.3) and 0.6
    for i in range(36000):  # one hour at 10 fps
        recorder.observe(i / 10, image, weak, [], holding=False)
    assert recorder.flush(30)
    recorder.close()
    assert recorder.counts["near_misses"] == 2
    assert len(list(tmp_path.glob("*near_miss*.zip"))) == 2
