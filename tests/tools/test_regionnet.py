"""The region classifier's ONNX graph: the same window probabilities as tools.loso scores, in the model format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge.decide.detect import OnnxDetector
from tools.export import export_model, metadata
from tools.loso import EBIKE, HeadFeatures, LinearHead, all_windows, window_probs
from tools.regionnet import OBJECT_CLASSES, RegionNet


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegionNet, LinearHead, Path]:
    rng = np.random.default_rng(0)
    head = LinearHead((rng.normal(size=(1280, 6)) * 0.05).astype(np.float32), rng.normal(size=6).astype(np.float32))
    net = RegionNet(head).eval()
    path = tmp_path_factory.mktemp("region") / "region.onnx"
    props = metadata({"version": "9.9.9", "classes": OBJECT_CLASSES, "thresholds": {"ebike": 0.7}})
    export_model(net, path, props)  # type: ignore[arg-type]
    return net, head, path


def test_the_graph_scores_each_window_as_the_loso_head_does(exported: tuple[RegionNet, LinearHead, Path]) -> None:
    net, head, path = exported
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 256, 320)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["detections"], {"images": x})[0][0]
    with torch.no_grad():
        b = net.backbone
        p5 = b.p4_to_p5(b.stem_to_p4(torch.from_numpy(x))).numpy()
    probs = window_probs(head, HeadFeatures()(p5), all_windows())[0]  # [W, C]
    assert got.shape == (50, 6) and np.all(np.diff(got[:, 4]) <= 1e-6)
    best = np.sort(probs[:, :5].reshape(-1))[::-1][:50]
    np.testing.assert_allclose(got[:, 4], best, atol=1e-4)
    ebike_rows = got[got[:, 5] == EBIKE]
    if len(ebike_rows):
        np.testing.assert_allclose(ebike_rows[0, 4], probs[:, EBIKE].max(), atol=1e-4)
    assert np.all((got[:, 0] < got[:, 2]) & (got[:, 1] < got[:, 3]))
    assert got[:, :4].min() >= 0 and got[:, 2].max() <= 320 and got[:, 3].max() <= 256


def test_the_device_loads_the_region_model(exported: tuple[RegionNet, LinearHead, Path]) -> None:
    _, _, path = exported
    det = OnnxDetector(path, min_score=0.0)
    assert det.metadata.classes == tuple(OBJECT_CLASSES) and det.metadata.thresholds["ebike"] == 0.7
    dets = det.detect(np.full((480, 640, 3), 100, np.uint8))
    assert dets and all(0 <= d.box[0] <= d.box[2] <= 640 and 0 <= d.box[1] <= d.box[3] <= 480 for d in dets)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == OBJECT_CLASSES and props["liftguard_format"] == "1"
