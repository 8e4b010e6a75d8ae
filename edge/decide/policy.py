"""The decision state machine: pure logic, time passed in, no I/O.

    IDLE ──evidence──▶ SUSPECT ──k of n frames, no veto──▶ BLOCKING ──e-bike gone──▶ CLEARING ──clear_after_s──▶ IDLE
                                                              │ hold_max_s ─▶ released + COOLDOWN
    Suppressed (never hold): fire-service input, camera offline/frozen, detector over budget,
    cool-down after a cap release or a remote release, blocking disabled (alert only).

Each call returns a `Decision`: whether the relay must be held, whether the voice warning is on,
and the events to deliver. Event timestamps `relay`/`voice` are filled in by the app when the
actuators actually switch.

Time: `now` is the *decision clock*: monotonic when live (an NTP step of the wall clock can neither
stretch a hold past `hold_max_s` nor make `hold_s` negative), clip time in replay. Events carry wall
time separately: `wall(now)` converts a decision-clock instant for the payload's `ts` and `times`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from contract.mqtt import EventPayload, EventTimes, EventType
from edge.config import PolicyConfig
from edge.decide.detect import Detection
from edge.decide.track import Track

DEFAULT_THRESHOLD = 0.5
WallClock = Callable[[float], float]


def same_time(t: float) -> float:
    """Clip time (replay, tests): the decision clock is also the time the events carry."""
    return t


# Detections down to this fraction of their class threshold are tracked (a weak frame keeps a track
# alive); only the full threshold counts as evidence.
TRACK_FLOOR = 0.5


class State(StrEnum):
    IDLE = "idle"
    SUSPECT = "suspect"
    BLOCKING = "blocking"
    CLEARING = "clearing"
    COOLDOWN = "cooldown"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class Conditions:
    """What the rest of the device says about itself at this moment."""

    camera_ok: bool = True
    within_budget: bool = True
    fire_active: bool = False


@dataclass
class Decision:
    hold: bool
    alarm: bool
    state: State
    events: list[EventPayload] = field(default_factory=list)


@dataclass
class _Hold:
    incident_id: str
    track_id: int
    started: float
    confidence: float
    last_evidence: float


def _suppression_reason(cond: Conditions) -> EventType | None:
    if cond.fire_active:
        return "fire_override"
    if not cond.camera_ok:
        return "camera_fault"
    if not cond.within_budget:
        return "overload"
    return None


def point_in_polygon(x: float, y: float, poly: Sequence[tuple[float, float]]) -> bool:
    inside = False
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


class Policy:
    def __init__(self, cfg: PolicyConfig, unit_id: str, blocking_enabled: bool = True, step_s: float = 0.1,
                 model_thresholds: Mapping[str, float] | None = None, wall: WallClock = same_time) -> None:
        """`step_s`: the longest gap between two calls (one frame period); the hold cap allows for it.
        `model_thresholds`: the model's suggested operating points; `cfg.thresholds` overrides them.
        `wall`: decision-clock instant -> the wall-clock seconds events carry."""
        self.cfg = cfg
        self.wall = wall
        self.step_s = step_s
        self.model_thresholds = dict(model_thresholds or {})
        self.unit_id = unit_id
        self.blocking_enabled = blocking_enabled
        self.state = State.IDLE
        self._hold: _Hold | None = None
        self._cooldown_until = 0.0
        self._faults: dict[EventType, str] = {}  # open fault type -> incident id
        self._alerted_tracks: set[int] = set()  # tracks already reported while not holding

    # --- evidence ---------------------------------------------------------------------------

    def threshold(self, cls: str) -> float:
        return self.cfg.thresholds.get(cls, self.model_thresholds.get(cls, DEFAULT_THRESHOLD))

    def admit(self, detections: Sequence[Detection], frame_size: tuple[int, int]) -> list[Detection]:
        """The detections worth tracking: at least TRACK_FLOOR of their class threshold and at least
        `min_box_area` of the frame (w, h)."""
        w, h = frame_size
        min_area = self.cfg.min_box_area * w * h
        return [d for d in detections if d.score >= self.threshold(d.cls) * TRACK_FLOOR and d.area >= min_area]

    def reconfigure(self, cfg: PolicyConfig, blocking_enabled: bool) -> None:
        """New settings from a live config change; the state machine (a hold, a cool-down) carries on."""
        self.cfg = cfg
        self.blocking_enabled = blocking_enabled

    def block_score(self, scores: dict[str, float]) -> float:
        return max((scores.get(c, 0.0) for c in self.cfg.block_classes), default=0.0)

    def _frames_above(self, entries: Sequence[tuple[float, dict[str, float]]], classes: Sequence[str]) -> int:
        return sum(any(s.get(c, 0.0) >= self.threshold(c) for c in classes) for _, s in entries)

    def _window(self, track: Track, now: float) -> list[tuple[float, dict[str, float]]]:
        horizon = now - self.cfg.confirm_within_s
        return [e for e in track.recent(self.cfg.confirm_window) if e[0] >= horizon]

    def is_vetoed(self, track: Track, now: float) -> bool:
        return self._frames_above(self._window(track, now), self.cfg.veto_classes) >= 1

    def is_confirmed(self, track: Track, now: float) -> bool:
        window = self._window(track, now)
        return (self._frames_above(window, self.cfg.block_classes) >= self.cfg.confirm_frames
                and not self._frames_above(window, self.cfg.veto_classes))

    def _in_roi(self, track: Track, frame_size: tuple[int, int]) -> bool:
        if self.cfg.roi is None:
            return True
        w, h = frame_size
        cx, cy = (track.box[0] + track.box[2]) / 2 / w, (track.box[1] + track.box[3]) / 2 / h
        return point_in_polygon(cx, cy, self.cfg.roi)

    # --- events -----------------------------------------------------------------------------

    def _event(self, type_: EventType, phase: str, now: float, incident_id: str, **kw: object) -> EventPayload:
        """An event; every instant in `times` is on the decision clock and converted to wall time here."""
        times = kw.pop("times", None) or EventTimes(decision=now)
        assert isinstance(times, EventTimes)
        wall_times = EventTimes(**{k: (None if v is None else max(0.0, self.wall(v)))
                                   for k, v in times.model_dump().items()})
        return EventPayload.model_validate(
            {"incident_id": incident_id, "unit_id": self.unit_id, "type": type_, "phase": phase,
             "ts": max(0.0, self.wall(now)), "times": wall_times, **{k: v for k, v in kw.items() if v is not None}}
        )

    def _release(self, now: float, type_: EventType, detail: str, cooldown: bool) -> EventPayload | None:
        hold, self._hold = self._hold, None
        if cooldown:
            self._cooldown_until = now + self.cfg.cooldown_s
        if hold is None:
            return None
        # Measured on the decision clock, so it is the time the door was really held (never negative,
        # never stretched or negative whatever the wall clock did meanwhile).
        held_s = min(max(0.0, now - hold.started), 3600.0)
        return self._event(type_, "end", now, hold.incident_id, track_id=hold.track_id,
                           hold_s=round(held_s, 3), detail=detail,
                           times=EventTimes(decision=now, end=now))

    def _faults_update(self, now: float, cond: Conditions, events: list[EventPayload]) -> None:
        wanted: dict[EventType, str] = {}
        if not cond.camera_ok:
            wanted["camera_fault"] = "camera offline or frozen: holds suppressed"
        if not cond.within_budget:
            wanted["overload"] = "inference over budget: holds suppressed"
        if cond.fire_active:
            wanted["fire_override"] = "fire-service input active: holds suppressed"
        for type_, detail in wanted.items():
            if type_ not in self._faults:
                self._faults[type_] = str(uuid.uuid4())
                events.append(self._event(type_, "start", now, self._faults[type_], detail=detail))
        for type_ in [t for t in self._faults if t not in wanted]:
            events.append(self._event(type_, "end", now, self._faults.pop(type_), detail="cleared"))

    # --- the machine ------------------------------------------------------------------------

    def update(self, now: float, tracks: Sequence[Track], cond: Conditions = Conditions(),
               frame_size: tuple[int, int] = (640, 480)) -> Decision:
        """One step: called for every processed frame and periodically by `tick` without frames."""
        events: list[EventPayload] = []
        guarded = self._guard(now, cond, events)
        if guarded is not None:
            return guarded

        candidates = [t for t in tracks if self._in_roi(t, frame_size)]
        confirmed = [t for t in candidates if self.is_confirmed(t, now)]

        if self._hold is not None:
            return self._while_holding(now, candidates, confirmed, events)

        if now < self._cooldown_until:
            self.state = State.COOLDOWN
            return Decision(False, False, self.state, events)

        if confirmed:
            best = max(confirmed, key=lambda t: self.block_score(t.history[-1][1]) if t.history else 0.0)
            confidence = round(max(self.block_score(s) for _, s in self._window(best, now)), 4)
            if not self.blocking_enabled:
                if best.id not in self._alerted_tracks:
                    self._alerted_tracks.add(best.id)
                    events.append(self._event("blocking_disabled", "start", now, str(uuid.uuid4()),
                                              track_id=best.id, cls="ebike", confidence=confidence,
                                              detail="e-bike confirmed; blocking disabled, alert only",
                                              times=EventTimes(first_seen=best.first_seen, capture=now,
                                                               decision=now)))
                self.state = State.SUSPECT
                return Decision(False, False, self.state, events)
            self._hold = _Hold(str(uuid.uuid4()), best.id, now, confidence, now)
            self.state = State.BLOCKING
            events.append(self._event("ebike_blocked", "start", now, self._hold.incident_id, track_id=best.id,
                                      cls="ebike", confidence=confidence,
                                      times=EventTimes(first_seen=best.first_seen, capture=now, decision=now)))
            return Decision(True, True, self.state, events)

        evidence = any(self._frames_above(t.recent(1), self.cfg.block_classes) for t in candidates)
        self.state = State.SUSPECT if evidence else State.IDLE
        return Decision(False, False, self.state, events)

    def _while_holding(self, now: float, candidates: Sequence[Track], confirmed: Sequence[Track],
                       events: list[EventPayload]) -> Decision:
        assert self._hold is not None
        held = self._hold
        held_track = next((t for t in candidates if t.id == held.track_id), None)
        if held_track is not None and self.is_vetoed(held_track, now):
            ev = self._release(now, "ebike_blocked", "released: wheelchair/stroller evidence on the track",
                               cooldown=False)
            events += [ev] if ev else []
            self.state = State.IDLE
            return Decision(False, False, self.state, events)
        still_there = bool(confirmed) or any(
            self._frames_above(t.recent(1), self.cfg.block_classes) and not self.is_vetoed(t, now)
            for t in candidates
        )
        if still_there:
            held.last_evidence = now
            self.state = State.BLOCKING
            return Decision(True, True, self.state, events)
        if now - held.last_evidence >= self.cfg.clear_after_s:
            ev = self._release(now, "ebike_blocked", "clear: e-bike left", cooldown=False)
            events += [ev] if ev else []
            self.state = State.IDLE
            return Decision(False, False, self.state, events)
        self.state = State.CLEARING
        return Decision(True, False, self.state, events)

    def tick(self, now: float, cond: Conditions) -> Decision:
        """Time-only step (no new frame): enforces the cap and suppression even if frames stop."""
        events: list[EventPayload] = []
        guarded = self._guard(now, cond, events)
        if guarded is not None:
            return guarded
        holding = self._hold is not None
        return Decision(holding, holding and self.state == State.BLOCKING, self.state, events)

    def _guard(self, now: float, cond: Conditions, events: list[EventPayload]) -> Decision | None:
        """The rules that apply with or without a frame: faults, suppression, the hold cap."""
        self._faults_update(now, cond, events)
        reason = _suppression_reason(cond)
        if reason is not None:
            ev = self._release(now, reason, f"released: {reason.replace('_', ' ')}", cooldown=False)
            events += [ev] if ev else []
            self.state = State.SUPPRESSED
            return Decision(False, False, self.state, events)
        # Release at the last step that still fits the cap: the next step (one frame period later)
        # would overshoot it, and "a hold never exceeds hold_max_s" is a promise, not a target.
        if self._hold is not None and now - self._hold.started + self.step_s > self.cfg.hold_max_s:
            ev = self._release(now, "cap_released", f"hold cap {self.cfg.hold_max_s:g} s reached", cooldown=True)
            events += [ev] if ev else []
            self.state = State.COOLDOWN
            return Decision(False, False, self.state, events)
        return None

    def remote_release(self, now: float) -> Decision:
        """Fleet `release` command: release now, and no new hold for cooldown_s."""
        ev = self._release(now, "remote_released", "released by the management centre", cooldown=True)
        self.state = State.COOLDOWN
        return Decision(False, False, self.state, [ev] if ev else [])

    def stall_release(self, now: float, detail: str) -> Decision:
        """The hold supervisor released the relay while the loop was stuck: end the hold, then cool down
        (a loop that just recovered must not re-hold at once)."""
        ev = self._release(now, "ebike_blocked", detail, cooldown=True)
        self.state = State.COOLDOWN
        return Decision(False, False, self.state, [ev] if ev else [])

    def shutdown(self, now: float) -> Decision:
        """The service is stopping: end an open hold so the fleet sees the door released."""
        ev = self._release(now, "ebike_blocked", "released: service stopping", cooldown=False)
        self.state = State.IDLE
        return Decision(False, False, self.state, [ev] if ev else [])

    def set_blocking(self, enabled: bool, now: float) -> Decision:
        self.blocking_enabled = enabled
        events: list[EventPayload] = []
        if not enabled:
            ev = self._release(now, "remote_released", "blocking disabled by the management centre", cooldown=False)
            events += [ev] if ev else []
            self.state = State.IDLE
        return Decision(False, False, self.state, events)

    @property
    def holding(self) -> bool:
        return self._hold is not None
