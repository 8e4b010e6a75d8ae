"""Snapshots are anonymised where they are made: heads of detected people are pixelated."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.act.unwired import LogActuators
from edge.config import parse_config
from edge.decide.detect import OnnxDetector
from edge.report.events import MemorySink
from edge.run.app import ClipClock, Pipeline
from edge.see.capture import Frame
from tests.support.onnx_models import constant_model


def _pipeline_after_a_block(tmp_path: Path) -> tuple[Pipeline, MemorySink]:
    # input pixels (scale 0.5, 8 px top padding): e-bike at frame (40..300, 84..400), person at (400..560, 84..464)
    model = constant_model(tmp_path / "m.onnx", [[20, 50, 150, 208, 0.95, 0], [200, 50, 280, 240, 0.9, 4]])
    cfg = parse_config({"actuators": {"backend": "none"}})
    sink, clock = MemorySink(), ClipClock()
    pipeline = Pipeline(cfg, OnnxDetector(model), LogActuators(), sink, clock=clock, t0=0.0)
    image = np.random.default_rng(1).integers(0, 255, (480, 640, 3), np.uint8)
    for i in range(5):
        clock.now = i / 10
        pipeline.process(Frame(i, i / 10, image))
    return pipeline, sink


def _head_is_pixelated(jpeg: bytes) -> bool:
    shot = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    head = shot[95:140, 410:550].astype(float)
    elsewhere = shot[250:300, 410:550].astype(float)
    # a mosaic is flat inside its cells: far less pixel-to-pixel variation than raw noise
    return bool(np.abs(np.diff(head, axis=1)).mean() < 0.5 * np.abs(np.diff(elsewhere, axis=1)).mean())


def test_the_snapshot_command_picture_is_anonymised_by_the_pipeline(tmp_path: Path) -> None:
    pipeline, _ = _pipeline_after_a_block(tmp_path)
    jpeg = pipeline.snapshot_jpeg()
    assert jpeg is not None and _head_is_pixelated(jpeg)


def test_the_alert_snapshot_has_the_persons_head_pixelated(tmp_path: Path) -> None:
    _, sink = _pipeline_after_a_block(tmp_path)
    [jpeg] = sink.snapshots.values()
    shot = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    head = shot[95:140, 410:550].astype(float)
    elsewhere = shot[250:300, 410:550].astype(float)
    # a mosaic is flat inside its cells: far less pixel-to-pixel variation than raw noise
    assert np.abs(np.diff(head, axis=1)).mean() < 0.5 * np.abs(np.diff(elsewhere, axis=1)).mean()
