"""The detector: the real shipped model, and models that must be refused at start-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.errors import ModelError
from edge.decide.detect import DEFAULT_MODEL, Letterbox, OnnxDetector
from tests.support.onnx_models import constant_model, metadata


def test_boxes_come_back_in_frame_pixels(tmp_path: Path) -> None:
    # 640x480 -> 320x240 centred in 320x256: scale 0.5, 8 px of padding on top
    model = constant_model(tmp_path / "m.onnx", [[10, 8, 110, 108, 0.9, 0]])
    [d] = OnnxDetector(model).detect(np.zeros((480, 640, 3), np.uint8))
    assert d.cls == "ebike"
    assert d.box == pytest.approx((20.0, 0.0, 220.0, 200.0))


def test_a_wheelchair_on_the_same_object_survives_nms(tmp_path: Path) -> None:
    rows = [[10, 8, 110, 108, 0.9, 0], [12, 10, 112, 110, 0.5, 2], [11, 9, 111, 109, 0.4, 0]]
    dets = OnnxDetector(constant_model(tmp_path / "m.onnx", rows)).detect(np.zeros((480, 640, 3), np.uint8))
    assert sorted(d.cls for d in dets) == ["ebike", "wheelchair"]


def test_letterbox_round_trip() -> None:
    lb = Letterbox.fit(1280, 720, 320, 256)
    boxes = np.array([[0, 38, 320, 218]], np.float32)
    assert lb.to_frame(boxes)[0] == pytest.approx([0, 0, 1280, 720], abs=1.0)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        (metadata(classes="<drop>"), "metadata lacks"),
        (metadata(liftguard_format="2"), "model format"),
        (metadata(output_layout="yolo"), "unsupported output layout"),
        (metadata(input_size="[640, 480]"), "does not match metadata"),
        (metadata(std="[0, 1, 1]"), "inconsistent metadata"),
        (metadata(classes="not json"), "unreadable metadata"),
    ],
)
def test_mismatched_models_are_refused(tmp_path: Path, props: dict[str, str], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        OnnxDetector(constant_model(tmp_path / "m.onnx", [], props=props))


def test_a_corrupt_model_file_is_refused(tmp_path: Path) -> None:
    good = DEFAULT_MODEL.read_bytes() if DEFAULT_MODEL.exists() else constant_model(
        tmp_path / "g.onnx", []).read_bytes()
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(good[: len(good) // 3] + b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="cannot load model"):
        OnnxDetector(bad)


def test_a_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        OnnxDetector(tmp_path / "absent.onnx")


def test_a_model_without_the_detections_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no output named"):
        OnnxDetector(constant_model(tmp_path / "m.onnx", [], output_name="boxes"))


def test_the_shipped_model_loads_and_runs_on_a_frame() -> None:
    detector = OnnxDetector(DEFAULT_MODEL)
    meta = detector.metadata
    assert {"ebike", "bicycle", "wheelchair", "stroller", "person"} <= set(meta.classes)
    assert meta.trained_on
    frame = np.full((480, 640, 3), 128, np.uint8)
    dets = detector.detect(frame)
    assert all(0 <= d.box[0] <= d.box[2] <= 640 and 0 <= d.box[1] <= d.box[3] <= 480 for d in dets)
    assert detector.last_inference_ms > 0
