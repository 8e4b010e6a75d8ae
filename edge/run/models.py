"""The pipeline's model slots (edge/report/model_update.py) and the start-up choice of model.

Start-up: the model in `models.dir/state.json` (the last one rolled out as active) is loaded and
self-checked; if it fails, the one before it is; if that fails too, the configured model. Whenever
the chosen one is not the rolled-out one, state.json is rewritten to say so (a rollback, kept in
its `rollbacks` list), so the fleet sees, through the heartbeat's model id and `model/reported`,
which model really runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contract.errors import LiftGuardError, ModelError
from edge.config import Config
from edge.decide.detect import OnnxDetector, self_check
from edge.decide.shadow import ShadowRunner, load_shadow_detector
from edge.report.model_update import ModelState, Slot
from edge.run.app import Pipeline, check_classes

log = logging.getLogger(__name__)


def load_checked(path: str | Path | None, cfg: Config) -> OnnxDetector:
    """A model loaded, self-checked and matching the policy's classes, or ModelError/ConfigError."""
    d = cfg.detector
    detector = OnnxDetector(path or None, threads=d.threads, min_score=d.min_score, nms_iou=d.nms_iou)
    self_check(detector)
    check_classes(cfg, detector.metadata.classes)
    return detector


def startup_detector(cfg: Config) -> tuple[OnnxDetector, str | None]:
    """The model to start with, and a note when a rolled-out model had to be given up (a rollback)."""
    state = ModelState.load(cfg.models.dir)
    tried: list[str] = []
    for slot in (state.active, state.previous):
        if slot is None or not slot.path:
            continue
        try:
            detector = load_checked(slot.path, cfg)
        except LiftGuardError as exc:
            log.error("model %s failed at start-up: %s", slot.model_id, exc)
            tried.append(f"{slot.model_id}: {str(exc)[:150]}")
            continue
        if tried:
            return detector, _rolled_back(state, slot, tried, cfg)
        return detector, None
    detector = load_checked(cfg.detector.model_path or None, cfg)  # the configured model: errors stop the unit
    if tried:
        return detector, _rolled_back(state, Slot(detector.metadata.model_id, ""), tried, cfg)
    return detector, None


def _rolled_back(state: ModelState, now: Slot, tried: list[str], cfg: Config) -> str:
    note = f"rolled back to {now.model_id}: " + "; ".join(tried)
    state.rollbacks.append(note[:200])
    state.active, state.previous = (now if now.path else None), None
    try:
        state.save(cfg.models.dir)
    except OSError as exc:
        log.error("could not record the rollback in %s: %s", cfg.models.dir, exc)
    log.error("%s", note)
    return note


def startup_shadow_path(cfg: Config) -> Path | None:
    """A shadow model rolled out earlier (state.json) when the config names none."""
    if cfg.models.shadow:
        return None
    slot = ModelState.load(cfg.models.dir).shadow
    return Path(slot.path) if slot and slot.path else None


class PipelineModels:
    """ModelSlots over a running pipeline: swaps are one attribute assignment each, made only after
    the new model loaded and passed its self-check (nothing changes on failure)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def active_model_id(self) -> str:
        return self.pipeline.detector.metadata.model_id

    def shadow_model_id(self) -> str | None:
        shadow = self.pipeline.shadow
        return shadow.model_id if shadow is not None and shadow.enabled else None

    def load_shadow(self, path: Path) -> str:
        p = self.pipeline
        runner = ShadowRunner(load_shadow_detector(path, p.cfg), p.cfg, budget_ms=p.cfg.detector.budget_ms,
                              wall=p.wall)
        p.shadow = runner
        return runner.model_id

    def stop_shadow(self) -> None:
        self.pipeline.shadow = None

    def activate(self, path: Path) -> str:
        p = self.pipeline
        detector = load_checked(path, p.cfg)
        if not detector.metadata.classes:
            raise ModelError(f"{path}: no classes")
        with p._lock:  # between two frames: the policy's operating points go with the model
            p.detector = detector
            p.policy.model_thresholds = dict(detector.metadata.thresholds)
        return detector.metadata.model_id
