"""Shadow models: a candidate detector run beside the active one, deciding but never acting.

A `ShadowRunner` has its own detector, tracker and policy (the unit's policy settings, the
candidate's own suggested thresholds) and no actuators at all: the only thing it can produce is
`shadow_decision` events saying what it would have done (hold, release, alert) and whether the
active model's relay was in that state at the same instant. The pipeline calls `observe` after
its own decision for the frame, outside its lock, so the relay never waits for the candidate.

Budget: the candidate runs on every `every`-th processed frame, and only when the time the frame
has already taken plus the candidate's last inference time stays within `budget_ms` (the same
budget after which a frame is stale); otherwise that frame is skipped and counted. Replays (clip
time) pass `budget_ms=None`: offline there is no frame budget to protect.

A candidate that raises while running is switched off (logged, counted) and the unit goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from contract.errors import ModelError
from contract.mqtt import EventPayload, EventTimes
from edge.config import Config, ModelsConfig
from edge.decide.detect import Detector, ImageBGR, OnnxDetector, self_check
from edge.decide.policy import Conditions, Policy, WallClock, same_time
from edge.decide.track import IouTracker

log = logging.getLogger(__name__)

# The policy events that are decisions about the door; faults are the active pipeline's to report.
Would = Literal["hold", "release", "alert"]
_WOULD: dict[tuple[str, str], Would] = {("ebike_blocked", "start"): "hold", ("ebike_blocked", "end"): "release",
          ("cap_released", "end"): "release", ("blocking_disabled", "start"): "alert"}


def shadow_path(models: ModelsConfig) -> Path | None:
    """The configured shadow model file: an absolute path as is, a bare name inside `models.dir`."""
    if not models.shadow:
        return None
    path = Path(models.shadow)
    return path if path.is_absolute() or path.parent != Path(".") else Path(models.dir) / path


def load_shadow_detector(path: str | Path, cfg: Config) -> OnnxDetector:
    """Load and self-check a candidate exactly as the active model is checked at start-up, and
    refuse one that lacks the classes the policy blocks (it could never say 'hold')."""
    detector = OnnxDetector(path, threads=1, min_score=cfg.detector.min_score, nms_iou=cfg.detector.nms_iou)
    self_check(detector)
    missing = sorted(set(cfg.policy.block_classes) - set(detector.metadata.classes))
    if missing:
        raise ModelError(f"{path}: shadow model has no class {', '.join(missing)} (the policy blocks it)")
    return detector


@dataclass
class ShadowStats:
    runs: int = 0
    skipped_budget: int = 0
    errors: int = 0
    events: int = 0
    last_ms: float = 0.0
    ms: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # recent run times (detect+decide)


class ShadowRunner:
    def __init__(self, detector: Detector, cfg: Config, every: int | None = None, budget_ms: float | None = None,
                 step_s: float | None = None, wall: WallClock = same_time) -> None:
        self.detector = detector
        self.model_id = detector.metadata.model_id
        self.every = every or cfg.models.shadow_every
        self.budget_ms = budget_ms
        self.tracker = IouTracker(cfg.tracker.match_iou, cfg.tracker.max_missed_s, cfg.policy.veto_iou)
        frame_step = step_s if step_s is not None else 1.0 / cfg.camera.fps
        # It sees every n-th frame: its longest gap between two calls is n frame periods.
        self.policy = Policy(cfg.policy, cfg.unit.id, cfg.blocking_enabled, step_s=frame_step * self.every,
                             model_thresholds=detector.metadata.thresholds, wall=wall)
        self.stats = ShadowStats()
        self.enabled = True
        self._seen = 0
        if budget_ms is not None:
            # Live: time one run now, so the very first budget check already knows what the candidate costs
            # (a first run of unknown length must not stretch a frame towards the hold supervisor's limit).
            blank = np.zeros((cfg.camera.height, cfg.camera.width, 3), np.uint8)
            started = time.perf_counter()
            detector.detect(blank)
            self.stats.last_ms = (time.perf_counter() - started) * 1000.0

    @property
    def holding(self) -> bool:
        """Whether the candidate would be holding the door now."""
        return self.enabled and self.policy.holding

    def due(self, spent_ms: float) -> bool:
        """Whether this frame is one the candidate should look at (every n-th, within the budget)."""
        if not self.enabled:
            return False
        self._seen += 1
        if self._seen % self.every:
            return False
        if self.budget_ms is not None and spent_ms + self.stats.last_ms > self.budget_ms:
            self.stats.skipped_budget += 1
            return False
        return True

    def observe(self, ts: float, image: ImageBGR, frame_size: tuple[int, int], cond: Conditions,
                active_holding: bool) -> list[EventPayload]:
        """Run the candidate on one frame (the caller checked `due`); its would-be decisions as events."""
        started = time.perf_counter()
        try:
            detections = self.policy.admit(self.detector.detect(image), frame_size)
            tracks = self.tracker.update(ts, detections)
            # Its own overload is not the unit's: only camera and fire conditions carry over.
            decision = self.policy.update(ts, tracks, Conditions(camera_ok=cond.camera_ok, within_budget=True,
                                                                 fire_active=cond.fire_active), frame_size)
        except Exception:  # a candidate must never take the unit down
            self.stats.errors += 1
            self.enabled = False
            log.exception("shadow model %s failed; shadow switched off", self.model_id)
            return []
        self.stats.last_ms = (time.perf_counter() - started) * 1000.0
        self.stats.ms.append(self.stats.last_ms)
        self.stats.runs += 1
        events = self.translate(decision.events, active_holding)
        self.stats.events += len(events)
        return events

    def translate(self, events: Sequence[EventPayload], active_holding: bool) -> list[EventPayload]:
        out = []
        for event in events:
            would = _WOULD.get((event.type, event.phase))
            if would is None:
                continue
            agrees = active_holding if would == "hold" else not active_holding if would == "release" else None
            detail = f"{self.model_id} would {would}" + (f" ({event.detail})" if event.detail else "")
            out.append(EventPayload(
                incident_id=event.incident_id, unit_id=event.unit_id, type="shadow_decision", phase=event.phase,
                ts=event.ts, times=EventTimes(decision=event.times.decision, first_seen=event.times.first_seen),
                track_id=event.track_id, cls=event.cls, confidence=event.confidence, hold_s=event.hold_s,
                detail=detail[:512], model_id=self.model_id[:128], would=would, agrees=agrees))
        return out
