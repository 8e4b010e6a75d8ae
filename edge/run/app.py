"""Wiring: frames flow detect → track → policy → actuators → events, one way.

`Pipeline` handles one frame (or one time tick) and owns the only lock; `replay` drives it on
clip time; `run_service` drives it from a live camera. Whatever happens, the relay is released:
`Pipeline.close` runs from `finally`, from SIGTERM/SIGINT handlers and from atexit.
"""

from __future__ import annotations

import atexit
import logging
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from contract.mqtt import EventPayload, HeartbeatPayload
from contract.stats import percentile
from edge import __version__
from edge.act.actuate import Actuators
from edge.config import Config, merge_fragment
from edge.decide.detect import Detection, Detector
from edge.decide.policy import Conditions, Decision, Policy, State
from edge.decide.track import IouTracker
from edge.report.events import EventSink
from edge.see.capture import Frame, ImageBGR
from edge.see.privacy import blur_faces

log = logging.getLogger(__name__)

Timeline = Callable[[str], None]
CLASS_COLOURS = {"ebike": (0, 0, 255), "bicycle": (255, 160, 0), "wheelchair": (0, 200, 0),
                 "stroller": (0, 200, 200), "person": (200, 200, 200), "cart": (160, 80, 200)}


def annotate(image: ImageBGR, detections: list[Detection], caption: str = "") -> ImageBGR:
    """Boxes and labels drawn on a copy of the frame (snapshots, demo output)."""
    out = image.copy()
    for d in detections:
        colour = CLASS_COLOURS.get(d.cls, (255, 255, 255))
        x1, y1, x2, y2 = (int(v) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(out, f"{d.cls} {d.score:.2f}", (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    if caption:
        cv2.putText(out, caption, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 255), 2, cv2.LINE_AA)
    return out


def describe(event: EventPayload, t: float) -> str | None:
    """One human line for the timeline, or None for events a person need not see."""
    stamp = f"{t:7.2f} s"
    if event.type == "ebike_blocked" and event.phase == "start":
        return f"{stamp}  e-bike confirmed (track {event.track_id}, {event.confidence:.2f}) → door held, voice on"
    if event.type == "ebike_blocked" and event.phase == "end":
        return f"{stamp}  {event.detail} → door released (held {event.hold_s:.1f} s)"
    if event.type == "cap_released":
        return f"{stamp}  {event.detail} → door released (held {event.hold_s:.1f} s), cool-down"
    if event.type == "blocking_disabled":
        return f"{stamp}  e-bike confirmed (track {event.track_id}, {event.confidence:.2f}) → alert only (disabled)"
    if event.phase == "end" and event.hold_s is not None:
        return f"{stamp}  {event.detail} → door released (held {event.hold_s:.1f} s)"
    return f"{stamp}  {event.type.replace('_', ' ')} {event.phase}: {event.detail or ''}".rstrip()


@dataclass
class Stats:
    frames: int = 0
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    pipeline_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    started: float = field(default_factory=time.time)

    def percentile(self, values: deque[float], q: float) -> float:
        """q in 0..1, the house's one nearest-rank percentile (contract.stats)."""
        return percentile(values, q * 100)


class Pipeline:
    """One step of the device. Thread-safe: frames, ticks, the fire input and fleet commands
    all go through `_lock`, so the relay has one owner at a time."""

    def __init__(self, cfg: Config, detector: Detector, actuators: Actuators, sink: EventSink,
                 timeline: Timeline | None = None, clock: Callable[[], float] = time.time,
                 t0: float | None = None) -> None:
        self.cfg = cfg
        self.detector = detector
        self.actuators = actuators
        self.sink = sink
        self.timeline = timeline
        self.clock = clock
        self.t0 = t0 if t0 is not None else clock()
        self.tracker = IouTracker(cfg.tracker.match_iou, cfg.tracker.max_missed_s, cfg.policy.veto_iou)
        self.policy = Policy(cfg.policy, cfg.unit.id, cfg.blocking_enabled, step_s=1.0 / cfg.camera.fps,
                             model_thresholds=detector.metadata.thresholds)
        self.stats = Stats()
        self.camera_ok = True
        self.last_frame: Frame | None = None
        self.last_detections: list[Detection] = []
        self.state = State.IDLE
        self.alarm = False
        self.best_snapshot: tuple[float, ImageBGR] | None = None
        self.on_relay_change: Callable[[bool], None] | None = None
        self._lock = threading.RLock()
        self._closed = False

    # --- inputs ---------------------------------------------------------------------------------

    def within_budget(self) -> bool:
        recent = list(self.stats.inference_ms)[-10:]
        return len(recent) < 3 or statistics.median(recent) <= self.cfg.detector.budget_ms

    def conditions(self) -> Conditions:
        return Conditions(camera_ok=self.camera_ok, within_budget=self.within_budget(),
                          fire_active=self.actuators.fire_active())

    def process(self, frame: Frame, camera_ok: bool = True) -> Decision:
        started = time.perf_counter()
        detections = self.detector.detect(frame.image)
        inference_ms = (time.perf_counter() - started) * 1000.0
        h, w = frame.image.shape[:2]
        detections = self.policy.admit(detections, (w, h))
        with self._lock:
            self.camera_ok = camera_ok
            self.stats.inference_ms.append(inference_ms)
            self._remember_snapshot(frame, detections)  # before the decision: this frame may confirm
            tracks = self.tracker.update(frame.ts, detections)
            decision = self.policy.update(frame.ts, tracks, self.conditions(), (w, h))
            self.last_frame, self.last_detections = frame, detections
            self._apply(decision, frame.ts, frame)
            self.stats.frames += 1
            self.stats.pipeline_ms.append((time.perf_counter() - started) * 1000.0)
        return decision

    def tick(self, now: float, camera_ok: bool) -> Decision:
        """No frame arrived: time still passes (hold cap, camera fault)."""
        with self._lock:
            self.camera_ok = camera_ok
            decision = self.policy.tick(now, self.conditions())
            self._apply(decision, now, None)
            return decision

    def on_fire(self, active: bool) -> None:
        """Fire-service input edge (from the actuator thread): apply at once, not at the next frame."""
        now = self.clock()
        self.tick(now, self.camera_ok)

    # --- outputs --------------------------------------------------------------------------------

    def _remember_snapshot(self, frame: Frame, detections: list[Detection]) -> None:
        """Keep the frame with the strongest e-bike evidence for the next start event."""
        if self.policy.holding:
            return  # the hold's picture went with its start event: no per-frame drawing while holding
        score = max((d.score for d in detections if d.cls in self.cfg.policy.block_classes), default=0.0)
        if score > 0 and (self.best_snapshot is None or score > self.best_snapshot[0]):
            self.best_snapshot = (score, self._picture(frame.image, detections))
        elif self.state == State.IDLE:
            self.best_snapshot = None  # evidence went away without a block: don't keep a stale picture

    def _picture(self, image: ImageBGR, detections: list[Detection]) -> ImageBGR:
        """The annotated snapshot, anonymised here, where it is made, before any sink sees it: heads
        of detected people are pixelated (or every face, where OpenCV has a face detector)."""
        if self.cfg.events.blur_faces:
            image = blur_faces(image, [d.box for d in detections if d.cls == "person"])
        return annotate(image, detections)

    def _apply(self, decision: Decision, now: float, frame: Frame | None) -> None:
        relay_at = voice_at = None
        if decision.hold != self.actuators.held:
            self.actuators.set_hold(decision.hold)
            relay_at = self.clock()
            if self.on_relay_change:
                self.on_relay_change(decision.hold)
        if decision.alarm != self.alarm:
            self.actuators.set_alarm(decision.alarm)
            self.alarm = decision.alarm
            voice_at = self.clock()
        self.state = decision.state
        for event in decision.events:
            self._emit(event, now, frame, relay_at, voice_at)

    def _emit(self, event: EventPayload, now: float, frame: Frame | None, relay_at: float | None,
              voice_at: float | None) -> None:
        times = event.times.model_copy(update={
            "capture": event.times.capture if event.times.capture is not None else (frame.ts if frame else None),
            "relay": relay_at if event.phase in ("start", "end") and relay_at is not None else None,
            "voice": voice_at if event.phase == "start" and voice_at is not None else None,
        })
        update: dict[str, Any] = {"times": times}
        jpeg: bytes | None = None
        if event.phase == "start" and event.type in ("ebike_blocked", "blocking_disabled") and self.best_snapshot:
            ok, buf = cv2.imencode(".jpg", self.best_snapshot[1], [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                jpeg = buf.tobytes()
                update["snapshot"] = f"snapshots/{event.event_id}"
            self.best_snapshot = None
        event = event.model_copy(update=update)
        line = describe(event, now - self.t0)
        if line and self.timeline:
            self.timeline(line)
        log.info("event %s %s %s", event.type, event.phase, event.event_id)
        self.sink.emit(event, jpeg)

    # --- fleet commands (edge.report.commands.DeviceControl) ---------------------------------------------

    def release_hold(self, reason: str) -> bool:
        with self._lock:
            was_holding = self.policy.holding
            self._apply(self.policy.remote_release(self.clock()), self.clock(), None)
            log.warning("remote release (%s): %s", reason, "released" if was_holding else "nothing held")
            return was_holding

    def set_blocking(self, enabled: bool) -> None:
        with self._lock:
            self._apply(self.policy.set_blocking(enabled, self.clock()), self.clock(), None)
            log.warning("blocking %s by the management centre", "enabled" if enabled else "disabled")

    def test_alarm(self) -> None:
        with self._lock:
            if not self.alarm:
                self.actuators.set_alarm(True)
        threading.Timer(3.0, self._end_test_alarm).start()

    def _end_test_alarm(self) -> None:
        with self._lock:
            if not self.alarm:
                self.actuators.set_alarm(False)

    def snapshot_jpeg(self) -> bytes | None:
        with self._lock:
            if self.last_frame is None:
                return None
            ok, buf = cv2.imencode(".jpg", self._picture(self.last_frame.image, self.last_detections))
            return buf.tobytes() if ok else None

    def apply_config(self, fragment: dict[str, Any]) -> dict[str, Any]:
        """Live-apply a fleet config fragment; only policy and blocking change without a restart."""
        new = merge_fragment(self.cfg, fragment)
        with self._lock:
            self.cfg = new
            self.policy.reconfigure(new.policy, new.blocking_enabled)
        return {"policy": new.policy.model_dump(mode="json"), "blocking_enabled": new.blocking_enabled}

    def heartbeat(self, camera_state: str, outbox_depth: int = 0, outbox_evicted: int = 0) -> HeartbeatPayload:
        s = self.stats
        now = time.time()
        return HeartbeatPayload(
            unit_id=self.cfg.unit.id, ts=now, uptime_s=max(0.0, now - s.started),
            fps=round(s.frames / max(now - s.started, 1e-3), 2),
            inference_p50_ms=round(s.percentile(s.inference_ms, 0.5), 2),
            inference_p95_ms=round(s.percentile(s.inference_ms, 0.95), 2),
            camera=camera_state if camera_state in ("online", "offline", "frozen", "starting") else "offline",
            relay="held" if self.actuators.held else "released",
            blocking_enabled=self.policy.blocking_enabled, outbox_depth=outbox_depth,
            outbox_evicted=outbox_evicted, model_id=self.detector.metadata.model_id, software=__version__,
            site=self.cfg.unit.site or None, building=self.cfg.unit.building or None,
            elevator=self.cfg.unit.elevator or None,
        )

    def close(self) -> None:
        """Release the door and stop everything. Idempotent; safe from signal handlers and atexit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.actuators.set_alarm(False)
            finally:
                self.actuators.set_hold(False)
                self.actuators.close()
            try:
                now = self.clock()
                for event in self.policy.shutdown(now).events:
                    self._emit(event, now, None, now, None)
            finally:
                self.sink.close()


# --- drivers -----------------------------------------------------------------------------------


class ClipClock:
    """Clip time for replays: 'now' is the timestamp of the frame being processed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def clip_frames(reader: Any, fps: float) -> Iterator[Frame]:
    """Frames of a recording on clip time: frame i at i / fps seconds."""
    index = 0
    while True:
        image = reader.read()
        if image is None:
            if reader.ended:
                return
            continue
        yield Frame(index, index / fps, image)
        index += 1


def replay(pipeline: Pipeline, frames: Iterator[Frame], fps: float, clock: ClipClock) -> int:
    """Run recorded frames through the pipeline as fast as the CPU allows; returns frames processed.

    After the last frame, clip time runs on (ticks at 1/fps) until the policy is idle, so a hold
    that is still active at the end of the clip is seen to clear or reach its cap."""
    last_ts = 0.0
    count = 0
    blank = np.zeros((480, 640, 3), np.uint8)
    for frame in frames:
        clock.now = frame.ts
        pipeline.process(frame)
        last_ts, blank = frame.ts, frame.image
        count += 1
    t = last_ts
    limit = last_ts + pipeline.cfg.policy.hold_max_s + 1
    empty = np.zeros_like(blank)
    while pipeline.policy.holding and t < limit:
        t += 1.0 / fps
        clock.now = t
        pipeline.process(Frame(count, t, empty))
        count += 1
    return count


def install_exit_guards(pipeline: Pipeline, stop: threading.Event) -> None:
    """SIGTERM/SIGINT stop the loop; atexit releases the relay even on an unexpected exit."""

    def handler(signum: int, _frame: object) -> None:
        # Unwind the main thread from wherever it is: its `finally` releases the door. Closing the
        # pins right here instead would race the frame being processed under the same (re-entrant) lock.
        log.warning("signal %s: releasing the door and stopping", signal.Signals(signum).name)
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    atexit.register(pipeline.close)
