"""Wiring: frames flow detect → track → policy → actuators → events, one way.

`Pipeline` handles one frame (or one time tick) and owns the only lock; `replay` drives it on
clip time; `run_service` drives it from a live camera. Whatever happens, the relay is released:
`Pipeline.close` runs from `finally`, from SIGTERM/SIGINT handlers and from atexit, and
`HoldSupervisor` (its own thread, never taking the pipeline's lock) releases a hold within 1 s of
the last processed frame when the loop itself is stuck.

Clocks: the pipeline decides on `clock` (time.monotonic live, clip time in replay); events carry
wall time through `wall` (a decision-clock instant -> epoch seconds), so an NTP step changes the
timestamps the fleet sees and nothing else.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np

from contract.bounds import MAX_COUNTER
from contract.errors import ConfigError
from contract.mqtt import EventPayload, HeartbeatPayload
from edge import __version__
from edge.act.base import Actuators
from edge.config import Config, merge_fragment
from edge.decide.detect import Detection, Detector
from edge.decide.policy import Conditions, Decision, Policy, State, WallClock, same_time
from edge.decide.shadow import ShadowRunner
from edge.decide.track import IouTracker
from edge.report.commands import check_merged_policy
from edge.report.events import EventSink
from edge.report.health import Metrics
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
    if event.type == "shadow_decision":
        return f"{stamp}  [shadow] {event.detail}"
    if event.type == "blocking_disabled":
        return f"{stamp}  e-bike confirmed (track {event.track_id}, {event.confidence:.2f}) → alert only (disabled)"
    if event.phase == "end" and event.hold_s is not None:
        return f"{stamp}  {event.detail} → door released (held {event.hold_s:.1f} s)"
    return f"{stamp}  {event.type.replace('_', ' ')} {event.phase}: {event.detail or ''}".rstrip()


def live_wall(t: float) -> float:
    """A monotonic instant as wall-clock seconds, at the wall clock's current offset."""
    return time.time() - (time.monotonic() - t)


class Pipeline:
    """One step of the device. Thread-safe: frames, ticks, the fire input and fleet commands
    all go through `_lock`, so the relay has one owner at a time."""

    def __init__(self, cfg: Config, detector: Detector, actuators: Actuators, sink: EventSink,
                 timeline: Timeline | None = None, clock: Callable[[], float] = time.monotonic,
                 t0: float | None = None, wall: WallClock | None = None, metrics: Metrics | None = None) -> None:
        """`clock`: the decision clock (monotonic live, a ClipClock in replay); `wall` converts its
        instants to the epoch seconds events carry (default: live_wall for time.monotonic, else the same).
        `metrics`: the device's registry the pipeline reports its counters and timings into (the service
        passes the health's, so heartbeat, status line and link count in one place; default: its own)."""
        check_classes(cfg, detector.metadata.classes)
        self.cfg = cfg
        self.detector = detector
        self.actuators = actuators
        self.sink = sink
        self.timeline = timeline
        self.clock = clock
        self.wall: WallClock = wall or (live_wall if clock is time.monotonic else same_time)
        self.t0 = t0 if t0 is not None else clock()
        self.tracker = IouTracker(cfg.tracker.match_iou, cfg.tracker.max_missed_s, cfg.policy.veto_iou)
        self.policy = Policy(cfg.policy, cfg.unit.id, cfg.blocking_enabled, step_s=1.0 / cfg.camera.fps,
                             model_thresholds=detector.metadata.thresholds, wall=self.wall)
        self.metrics = metrics if metrics is not None else Metrics()
        # Decision-clock times of the last frames decided: the overload budget's input (within_budget).
        self.frame_times: deque[float] = deque(maxlen=20)
        self.camera_ok = True
        self.last_frame: Frame | None = None
        self.last_detections: list[Detection] = []
        self.state = State.IDLE
        self.alarm = False
        self.best_snapshot: tuple[float, ImageBGR] | None = None
        self.on_relay_change: Callable[[bool], None] | None = None
        self.relay_listeners: list[Callable[[bool], None]] = []
        # Called after every processed frame (the I/O-board heartbeat, health): proof of progress.
        self.progress_listeners: list[Callable[[], None]] = []
        # Live-config appliers, one per remotely settable section (see apply_config).
        self.updaters: dict[str, Callable[[Config], None]] = {
            "policy": self._update_policy, "tracker": self._update_tracker, "detector": self._update_detector,
            "blocking_enabled": self._update_blocking,
        }
        self.last_progress = time.monotonic()  # real time, for HoldSupervisor (not the decision clock)
        self._stall_release: str | None = None  # set by HoldSupervisor; the loop turns it into an event
        # A candidate model deciding beside the active one, never acting (edge/decide/shadow.py).
        # Swapped by assigning the attribute (one reference: atomic), never under the frame's lock.
        self.shadow: ShadowRunner | None = None
        # After each frame's decision, outside the lock (event clips): frame, admitted detections, decision.
        self.frame_listeners: list[Callable[[Frame, list[Detection], Decision], None]] = []
        self._lock = threading.RLock()
        self._closed = False

    # --- inputs ---------------------------------------------------------------------------------

    def achieved_fps(self) -> float:
        """Frames decided per second of the decision clock (clip time in replay), over the last frames."""
        ts = list(self.frame_times)
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        median_gap = statistics.median(gaps)
        return 1.0 / median_gap if median_gap > 0 else 0.0

    def within_budget(self) -> bool:
        """Overload is defined by the decision budget: at the frame rate actually achieved, can
        `confirm_frames` frames still be seen within `confirm_within_s`? (Slow inference alone is not
        overload: the newest frame is processed and stale ones skipped, so a busy CPU lowers the rate.)"""
        if len(self.frame_times) < 4:
            return True
        fps = self.achieved_fps()
        p = self.cfg.policy
        return fps > 0 and (p.confirm_frames - 1) / fps <= p.confirm_within_s

    def conditions(self) -> Conditions:
        return Conditions(camera_ok=self.camera_ok, within_budget=self.within_budget(),
                          fire_active=self.actuators.fire_active())

    def stale_after_s(self) -> float:
        """A frame older than this when its turn comes is skipped: the newest frame is what matters."""
        return max(2.0 / self.cfg.camera.fps, self.cfg.detector.budget_ms / 1000.0)

    def process(self, frame: Frame, camera_ok: bool = True) -> Decision:
        """Detect, track and decide on one frame. A repeated frame (identical to the previous one: a
        frozen camera) and a stale one (older than stale_after_s on the decision clock) are not
        evidence: time passes (tick), nothing is detected on them, so they can never confirm a hold."""
        if frame.repeat or self.clock() - frame.ts > self.stale_after_s():
            self.metrics.inc("frames_skipped_repeated" if frame.repeat else "frames_skipped_stale")
            return self.tick(max(frame.ts, self.clock()), camera_ok)
        started = time.perf_counter()
        detections = self.detector.detect(frame.image)
        inference_ms = (time.perf_counter() - started) * 1000.0
        h, w = frame.image.shape[:2]
        detections = self.policy.admit(detections, (w, h))
        with self._lock:
            self.camera_ok = camera_ok
            self.metrics.observe("inference_ms", inference_ms)
            self.frame_times.append(frame.ts)
            self._take_stall_release(frame.ts)
            self._remember_snapshot(frame, detections)  # before the decision: this frame may confirm
            tracks = self.tracker.update(frame.ts, detections)
            decision = self.policy.update(frame.ts, tracks, self.conditions(), (w, h))
            self.last_frame, self.last_detections = frame, detections
            self._apply(decision, frame.ts, frame)
            self.metrics.inc("frames_processed")
            self.metrics.observe("pipeline_ms", (time.perf_counter() - started) * 1000.0)
            self.last_progress = time.monotonic()
        for listener in self.progress_listeners:
            listener()
        for frame_listener in self.frame_listeners:
            frame_listener(frame, detections, decision)
        self._run_shadow(frame, (w, h), (time.perf_counter() - started) * 1000.0)
        return decision

    def _run_shadow(self, frame: Frame, size: tuple[int, int], spent_ms: float) -> None:
        """The shadow model, after the frame's own decision and outside the lock: its events only."""
        shadow = self.shadow
        if shadow is None or not shadow.due(spent_ms):
            return
        events = shadow.observe(frame.ts, frame.image, size, self.conditions(), self.actuators.held)
        with self._lock:
            if self._closed:
                return
            for event in events:
                line = describe(event, frame.ts - self.t0)
                if line and self.timeline:
                    self.timeline(line)
                self.sink.emit(event, None)

    def stall_release(self, why: str) -> bool:
        """HoldSupervisor's release: the relay straight through the actuators, without the pipeline's
        lock (the stuck thread may hold it). The policy ends its hold at the loop's next step."""
        if not self.actuators.held:
            return False
        self.actuators.set_alarm(False)
        self.actuators.set_hold(False)
        self._stall_release = why
        for listener in self.relay_listeners:
            listener(False)
        return True

    def _take_stall_release(self, now: float) -> None:
        why, self._stall_release = self._stall_release, None
        if why is not None and self.policy.holding:
            self._apply(self.policy.stall_release(now, f"released: {why}"), now, None)

    def tick(self, now: float, camera_ok: bool) -> Decision:
        """No frame arrived: time still passes (hold cap, camera fault)."""
        with self._lock:
            self.camera_ok = camera_ok
            self._take_stall_release(now)
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
        if self._stall_release is not None and decision.hold:
            decision.hold = decision.alarm = False  # the supervisor released: the loop must not re-hold
        if decision.hold != self.actuators.held:
            self.actuators.set_hold(decision.hold)
            relay_at = self.clock()
            if self.on_relay_change:
                self.on_relay_change(decision.hold)
            for listener in self.relay_listeners:
                listener(self.actuators.held)
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
            "capture": event.times.capture if event.times.capture is not None else (
                self.wall(frame.ts) if frame else None),
            "relay": self.wall(relay_at) if event.phase in ("start", "end") and relay_at is not None else None,
            "voice": self.wall(voice_at) if event.phase == "start" and voice_at is not None else None,
        })
        update: dict[str, Any] = {"times": times}
        if event.type in ("ebike_blocked", "blocking_disabled") and event.model_id is None:
            update["model_id"] = self.detector.metadata.model_id[:128]  # the deciding model (dataset export)
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
        """Live-apply a fleet config fragment (already checked against edge.commands.RemoteConfig).

        Typed per-section update map: every section in the fragment has an updater that puts the new
        values into the live object (policy, tracker, detector, camera...), or the whole fragment is
        refused (ConfigError) before anything changes. The answer is read back from the live objects."""
        if not isinstance(fragment, dict):
            raise ConfigError("config fragment must be a mapping")
        missing = sorted(str(k) for k in fragment if k not in self.updaters)
        if missing:
            raise ConfigError(f"cannot be applied live: {', '.join(missing)[:200]}")
        new = merge_fragment(self.cfg, fragment)
        check_classes(new, self.detector.metadata.classes)
        if "policy" in fragment:
            check_merged_policy(new.policy)
        with self._lock:
            for section in fragment:
                self.updaters[section](new)
            self.cfg = new
            return {section: self.live_section(section) for section in fragment}

    def live_section(self, section: str) -> Any:
        """What the live objects run for one section (the reported config)."""
        if section == "policy":
            return self.policy.cfg.model_dump(mode="json")
        if section == "tracker":
            return {"match_iou": self.tracker.match_iou, "max_missed_s": self.tracker.max_missed_s}
        if section == "blocking_enabled":
            return self.policy.blocking_enabled
        if section == "detector":
            return {k: getattr(self.detector, k, getattr(self.cfg.detector, k))
                    for k in ("min_score", "nms_iou")} | {"budget_ms": self.cfg.detector.budget_ms}
        return getattr(self.cfg, section).model_dump(mode="json")

    def _update_policy(self, new: Config) -> None:
        self.policy.reconfigure(new.policy, self.policy.blocking_enabled)
        self.tracker.merge_iou = new.policy.veto_iou

    def _update_tracker(self, new: Config) -> None:
        self.tracker.match_iou = new.tracker.match_iou
        self.tracker.max_missed_s = new.tracker.max_missed_s

    def _update_detector(self, new: Config) -> None:
        for name in ("min_score", "nms_iou"):
            if not hasattr(self.detector, name):
                raise ConfigError(f"detector.{name} cannot be changed on this detector")
            setattr(self.detector, name, getattr(new.detector, name))

    def _update_blocking(self, new: Config) -> None:
        self.policy.reconfigure(self.policy.cfg, new.blocking_enabled)

    def heartbeat(self, camera_state: str, outbox_depth: int = 0, outbox_evicted: int = 0) -> HeartbeatPayload:
        uptime = self.metrics.uptime_s()
        p50, p95 = self.metrics.inference_percentiles()
        return HeartbeatPayload(
            unit_id=self.cfg.unit.id, ts=max(0.0, time.time()), uptime_s=uptime,
            fps=round(min(self.metrics.counter("frames_processed") / max(uptime, 1e-3), 1000.0), 2),
            inference_p50_ms=round(p50, 2), inference_p95_ms=round(p95, 2),
            camera=camera_state if camera_state in ("online", "offline", "frozen", "starting") else "offline",
            relay="held" if self.actuators.held else "released",
            blocking_enabled=self.policy.blocking_enabled, outbox_depth=outbox_depth,
            outbox_evicted=outbox_evicted, model_id=self.detector.metadata.model_id, software=__version__,
            shadow_model_id=self.shadow.model_id[:128] if self.shadow is not None and self.shadow.enabled else None,
            shadow_runs=min(self.shadow.stats.runs, MAX_COUNTER) if self.shadow is not None else 0,
            shadow_skipped_budget=min(self.shadow.stats.skipped_budget, MAX_COUNTER) if self.shadow is not None else 0,
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


def check_classes(cfg: Config, model_classes: tuple[str, ...]) -> None:
    """block_classes (and veto_classes) must name classes the model has: a typo would block nothing."""
    unknown = sorted(set(cfg.policy.block_classes) - set(model_classes))
    if unknown:
        raise ConfigError(f"policy.block_classes: the model has no class {', '.join(map(repr, unknown))} "
                          f"(it has {', '.join(model_classes)})")
    missing_veto = sorted(set(cfg.policy.veto_classes) - set(model_classes))
    if missing_veto:
        log.warning("policy.veto_classes %s are not classes of the model: no veto evidence for them", missing_veto)


class HoldSupervisor:
    """Releases the door when the pipeline stops making progress, independently of the main loop.

    Its own thread checks, every `poll_s`, how long ago a frame last went through the whole pipeline
    (`Pipeline.last_progress`, real monotonic time); past `stall_after_s` a hold is released through
    the actuators directly, without the pipeline's lock (a stuck detector, a deadlock). Works for every
    actuator backend; the I/O board's own heartbeat timeout is a second, independent line."""

    def __init__(self, pipeline: Pipeline, stall_after_s: float = 0.7, poll_s: float = 0.05) -> None:
        self.pipeline = pipeline
        self.stall_after_s = stall_after_s
        self.poll_s = poll_s
        self.releases: list[float] = []  # frame age (s) at each release: for logs and tests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hold-supervisor", daemon=True)

    def start(self) -> HoldSupervisor:
        self._thread.start()
        return self

    def check(self) -> bool:
        age = time.monotonic() - self.pipeline.last_progress
        if age > self.stall_after_s and self.pipeline.stall_release(f"no frame processed for {age:.1f} s"):
            log.error("pipeline stalled (no frame processed for %.2f s): door released by the supervisor", age)
            self.releases.append(age)  # after the log line: a reader that sees the release sees its log
            return True
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # the supervisor must outlive whatever one check raised
                log.exception("hold supervisor check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


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
    while (pipeline.policy.holding or (pipeline.shadow is not None and pipeline.shadow.holding)) and t < limit:
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
