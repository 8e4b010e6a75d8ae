"""Export round trip: the ONNX graph decodes exactly like PyTorch and carries the v1 metadata."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge.decide.detect import OnnxDetector
from tools import export
from tools.augment import letterbox, normalise
from tools.model import CLASSES, LiftGuardDetector, complete_state

REQUIRED = ("liftguard_format", "model_id", "classes", "input_size", "mean", "std", "output_layout",
            "letterbox", "version", "trained_on", "thresholds")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[LiftGuardDetector, Path]:
    torch.manual_seed(0)
    model = LiftGuardDetector()
    model.backbone.load_pretrained()
    for p in model.head.parameters():  # a spread-out random head: the graph, not accuracy, is under test
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    run = tmp_path_factory.mktemp("run")
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES, "version": "9.9.9",
                "thresholds": {"ebike": 0.45, "wheelchair": 0.3}, "trained_on": "synthetic: 16"}, run / "model.pt")
    out = run / "m.onnx"
    assert export.main(["--run", str(run), "--out", str(out)]) == 0
    return model, out


def test_onnxruntime_matches_pytorch(exported: tuple[LiftGuardDetector, Path]) -> None:
    model, path = exported
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 256, 320)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["detections"], {"images": x})[0]
    assert got.shape == (1, 50, 6)
    # Rows are compared where scores are non-zero: zero-score padding rows may come in any order.
    live = ref[0, :, 4] > 1e-6
    assert live.sum() > 10
    np.testing.assert_allclose(got[0, live, 4:], ref[0, live, 4:], atol=1e-4)
    # Coordinates are hundreds of pixels built from exp(); 1e-3 px is float32 noise at that scale.
    np.testing.assert_allclose(got[0, live, :4], ref[0, live, :4], atol=1e-3, rtol=1e-5)
    assert (np.diff(got[0, :, 4]) <= 1e-7).all(), "rows must be sorted by score"
    assert set(np.unique(got[0, :, 5])) <= set(range(len(CLASSES)))


def test_metadata_follows_the_model_format(exported: tuple[LiftGuardDetector, Path]) -> None:
    _, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert all(k in props for k in REQUIRED)
    assert props["liftguard_format"] == "1" and props["model_id"] == "liftguard-det-9.9.9"
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["input_size"]) == [320, 256]
    assert json.loads(props["mean"]) == [0.5, 0.5, 0.5] and json.loads(props["std"]) == [0.5, 0.5, 0.5]
    assert props["output_layout"] == "xyxy_score_class" and props["letterbox"] == "center,114"
    assert json.loads(props["thresholds"])["ebike"] == 0.45
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_the_device_detector_accepts_the_export(exported: tuple[LiftGuardDetector, Path]) -> None:
    _, path = exported
    det = OnnxDetector(path, min_score=0.0)
    assert det.metadata.classes == tuple(CLASSES) and det.metadata.thresholds["ebike"] == 0.45
    dets = det.detect(np.full((480, 640, 3), 100, np.uint8))
    assert all(0 <= d.box[0] <= d.box[2] <= 640 and 0 <= d.box[1] <= d.box[3] <= 480 for d in dets)


def test_the_shipped_checkpoint_is_the_shipped_model() -> None:
    # models/liftguard-det-<version>.pt is what `tools.train --init` fine-tunes from for a site; it must
    # hold the very weights of models/liftguard-det.onnx (stored as float16, hence the tolerance).
    models = Path(__file__).resolve().parents[2] / "models"
    version = OnnxDetector(models / "liftguard-det.onnx").metadata.version
    ckpt = torch.load(models / f"liftguard-det-{version}.pt", map_location="cpu", weights_only=False)
    assert ckpt["classes"] == CLASSES and ckpt["version"] == version
    model = LiftGuardDetector()
    model.load_state_dict(complete_state(ckpt["state_dict"]), strict=True)
    # The last frame of the bundled demo clip: an e-bike in a rendered car, so real detections exist.
    clip = cv2.VideoCapture(str(models.parent / "edge" / "assets" / "demo_clip.mp4"))
    frames = []
    while (ok_frame := clip.read())[0]:
        frames.append(ok_frame[1])
    image, _ = letterbox(cv2.cvtColor(frames[-1], cv2.COLOR_BGR2RGB), None)
    x = normalise(image)[None]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()[0]
    got = ort.InferenceSession(str(models / "liftguard-det.onnx"),
                               providers=["CPUExecutionProvider"]).run(["detections"], {"images": x})[0][0]
    top = ref[:, 4] > 0.05
    assert top.any()
    np.testing.assert_allclose(got[top, 4], ref[top, 4], atol=5e-3)
    np.testing.assert_array_equal(got[top, 5], ref[top, 5])
