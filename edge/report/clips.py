"""Event clips (issue 17, item 1; device side): a few seconds around each hold, for labelling and training.

`ClipRecorder.observe` is called by the pipeline after each frame's decision, outside its lock. It
keeps an in-memory ring of the last `pre_s` seconds (frames scaled to at most `max_width` px, with
their detections). A hold start, or a near miss (a blocked class scored between `near_miss_floor`
and its threshold while nothing is held, at most `near_miss_per_hour`), opens a clip that collects
frames for `post_s` more seconds. A finished clip goes to a writer thread through a bounded queue:
faces are blurred there (edge/see/privacy.py), frames are JPEG-encoded, and the clip is written
atomically as one uncompressed zip (`frames/NNN.jpg` + `clip.json` with the per-frame detections).

The frame loop never waits: `observe` only appends references and, at the end of a clip, puts it
on the queue without blocking; a full queue drops the clip and counts it. On disk, clips live under
`clips.dir` within `clips.max_mb`: the oldest are evicted (and counted) to make room.

Clips of holds are uploaded to the fleet by the MQTT link (edge/report/clip_upload.py; the transport is
decided in contract/clips.py), which removes each clip once the broker acknowledged all of it. Near-miss
clips name no alert, which the fleet requires, so they stay on the unit for `liftguard` tools to collect.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from contract.clips import MAX_CLIP_FRAMES, ClipDetection, ClipFrame, ClipManifest
from contract.mqtt import EventPayload
from edge.config import ClipsConfig
from edge.decide.detect import Detection
from edge.see.capture import ImageBGR
from edge.see.privacy import blur_faces

log = logging.getLogger(__name__)


@dataclass
class _Shot:
    ts: float
    image: ImageBGR
    detections: list[Detection]
    scale: float


@dataclass
class Clip:
    clip_id: str
    reason: Literal["hold", "near_miss"]
    trigger_ts: float
    unit_id: str
    incident_id: str | None
    shots: list[_Shot] = field(default_factory=list)


def _scaled_box(box: Sequence[float], k: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v) * k, 1) for v in box)
    return x1, y1, x2, y2


class ClipRecorder:
    def __init__(self, cfg: ClipsConfig, unit_id: str, block_classes: Sequence[str],
                 threshold: Callable[[str], float] = lambda _cls: 0.5, queue_size: int = 2) -> None:
        self.cfg = cfg
        self.unit_id = unit_id
        self.block_classes = tuple(block_classes)
        self.threshold = threshold  # the policy's operating point per class
        self.dir = Path(cfg.dir)
        self.counts = {"clips": 0, "near_misses": 0, "dropped_busy": 0, "evicted": 0, "write_errors": 0}
        self._ring: deque[_Shot] = deque()
        self._open: list[Clip] = []
        self._last_near_miss = -1e18
        self._queue: queue.Queue[Clip | None] = queue.Queue(maxsize=queue_size)
        self._writer = threading.Thread(target=self._write_loop, name="clip-writer", daemon=True)
        self._writer.start()

    # --- the frame loop's side: cheap, never blocking -------------------------------------------

    def observe(self, ts: float, image: ImageBGR, detections: Sequence[Detection], events: Sequence[EventPayload],
                holding: bool) -> None:
        h, w = image.shape[:2]
        scale = min(1.0, self.cfg.max_width / w)
        if scale < 1.0:
            image = np.asarray(cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA),
                               np.uint8)
        shot = _Shot(ts, image, list(detections), scale)
        self._ring.append(shot)
        while self._ring and ts - self._ring[0].ts > self.cfg.pre_s:
            self._ring.popleft()
        for clip in self._open:
            clip.shots.append(shot)
        for event in events:
            # An e-bike confirmed while blocking is disabled is an alert too (the fleet shows it): same clip.
            if event.type in ("ebike_blocked", "blocking_disabled") and event.phase == "start":
                self._begin("hold", ts, event.incident_id)
        if not holding and not self._open and self.cfg.near_miss_per_hour > 0 and self._near_miss(detections) \
                and ts - self._last_near_miss >= 3600.0 / self.cfg.near_miss_per_hour:
            self._last_near_miss = ts
            self.counts["near_misses"] += 1
            self._begin("near_miss", ts, None)
        for clip in [c for c in self._open if ts - c.trigger_ts >= self.cfg.post_s]:
            self._open.remove(clip)
            try:
                self._queue.put_nowait(clip)
            except queue.Full:
                self.counts["dropped_busy"] += 1
                log.warning("clip %s dropped: the writer is still busy", clip.clip_id)

    def _near_miss(self, detections: Sequence[Detection]) -> bool:
        return any(d.cls in self.block_classes and self.cfg.near_miss_floor <= d.score < self.threshold(d.cls)
                   for d in detections)

    def _begin(self, reason: Literal["hold", "near_miss"], ts: float, incident_id: str | None) -> None:
        clip = Clip(uuid.uuid4().hex, reason, ts, self.unit_id, incident_id, shots=list(self._ring))
        self._open.append(clip)

    # --- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            clip = self._queue.get()
            if clip is None:
                return
            try:
                self.write(clip)
            except Exception:
                self.counts["write_errors"] += 1
                log.exception("clip %s could not be written", clip.clip_id)
            finally:
                self._queue.task_done()

    def write(self, clip: Clip) -> Path:
        frames = []
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            step = max(1, -(-len(clip.shots) // MAX_CLIP_FRAMES))  # a very high frame rate: every n-th frame
            for i, shot in enumerate(clip.shots[::step]):
                k = shot.scale
                people = [(d.box[0] * k, d.box[1] * k, d.box[2] * k, d.box[3] * k)
                          for d in shot.detections if d.cls == "person"]
                image = blur_faces(shot.image, people)  # before anything is kept: anonymised at the source
                ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if not ok:
                    continue
                name = f"frames/{i:03d}.jpg"
                zf.writestr(name, jpeg.tobytes())
                frames.append(ClipFrame(file=name, t=round(shot.ts - clip.trigger_ts, 3), detections=[
                    ClipDetection(cls=d.cls, score=round(d.score, 4), box=_scaled_box(d.box, shot.scale))
                    for d in shot.detections[:100]]))
            manifest = ClipManifest(clip_id=clip.clip_id, unit_id=clip.unit_id, reason=clip.reason,
                                    incident_id=clip.incident_id, trigger_ts=clip.trigger_ts, frames=frames)
            zf.writestr("clip.json", manifest.model_dump_json())
        data = buf.getvalue()
        self._make_room(len(data))
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{clip.trigger_ts:013.3f}-{clip.reason}-{clip.clip_id[:12]}.zip"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.counts["clips"] += 1
        log.info("clip %s (%s, %d frames, %d KB) kept", path.name, clip.reason, len(frames), len(data) // 1024)
        return path

    def _make_room(self, incoming: int) -> None:
        cap = int(self.cfg.max_mb * 1024 * 1024)
        clips = sorted(self.dir.glob("*.zip")) if self.dir.is_dir() else []
        total = sum(p.stat().st_size for p in clips) + incoming
        for old in clips:  # names start with the trigger time: oldest first
            if total <= cap:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
            self.counts["evicted"] += 1

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for queued clips to be written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            return
        self._writer.join(timeout=10)
