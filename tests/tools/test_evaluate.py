"""`liftguard eval` on a hand-made fixture: a fake detector whose outputs we choose, so every number is known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.decide.detect import Detection, ModelMetadata
from tools.evaluate import evaluate
from tools.metrics import wilson_interval

CLASSES = ("ebike", "bicycle", "wheelchair", "stroller", "person", "cart")
BOX = (20.0, 20.0, 60.0, 60.0)  # every labelled object sits here in its 100×80 image
OTHER = (70.0, 5.0, 95.0, 30.0)

# image → (label class or None, detections the fake model returns)
FIXTURE: dict[str, tuple[int | None, list[Detection]]] = {
    "a_ebike_hit": (0, [Detection(BOX, 0.9, "ebike")]),
    "b_ebike_low": (0, [Detection(BOX, 0.4, "ebike")]),  # below the 0.5 e-bike threshold: missed
    "c_ebike_vetoed": (0, [Detection(BOX, 0.8, "ebike"), Detection(BOX, 0.7, "wheelchair")]),  # veto: missed
    "d_wheelchair": (2, [Detection(BOX, 0.6, "ebike"), Detection(BOX, 0.9, "wheelchair")]),  # veto: allowed
    "e_bicycle": (1, [Detection(OTHER, 0.7, "ebike"), Detection(BOX, 0.8, "bicycle")]),  # false block
    "f_person": (4, []),
    "g_street": (None, [Detection(OTHER, 0.75, "ebike")]),  # nothing labelled (a street scene): false block
}


class FakeDetector:
    metadata = ModelMetadata("fake-1", CLASSES, 320, 256, (0.5,) * 3, (0.5,) * 3, thresholds={"wheelchair": 0.5})

    def detect(self, frame: np.ndarray) -> list[Detection]:
        name = sorted(FIXTURE)[int(frame[0, 0, 0]) // 10]  # the image index is written into its first pixel
        return FIXTURE[name][1]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i, (name, (cls, _)) in enumerate(sorted(FIXTURE.items())):
        img = np.full((80, 100, 3), 128, np.uint8)
        img[0, 0] = i * 10
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), img)
        x1, y1, x2, y2 = BOX
        line = f"{cls} {(x1 + x2) / 200} {(y1 + y2) / 160} {(x2 - x1) / 100} {(y2 - y1) / 80}\n"
        (tmp_path / "labels" / f"{name}.txt").write_text(line if cls is not None else "")
    (tmp_path / "data.yaml").write_text("names: [ebike, bicycle, wheelchair, stroller, person, cart]\n")
    return tmp_path


def test_metrics_from_yolo_labels_are_exact(folder: Path) -> None:
    out = folder / "out"
    m = evaluate("fake.onnx", folder / "images", out, folder / "labels", folder / "data.yaml",
                 detector=FakeDetector(), bench_runs=5)
    assert m["n_images"] == 7
    assert m["ebike_recall"] == pytest.approx(1 / 3)
    assert m["false_block_rate"] == pytest.approx(2 / 4)
    # The promise "never hold wheelchairs, strollers, bicycles, people" is scored apart from the background.
    assert (m["protected_images"], m["protected_false_blocks"]) == (3, 1)
    assert m["protected_false_block_rate"] == pytest.approx(1 / 3)
    assert (m["background_images"], m["background_false_blocks"], m["background_false_block_rate"]) == (1, 1, 1.0)
    # Each rate carries its 95 % Wilson interval: 1 of 3 e-bikes found is anything from 6 % to 79 %.
    lo, hi = m["ebike_recall_ci95"]
    assert lo == pytest.approx(0.0615, abs=1e-3) and hi == pytest.approx(0.7923, abs=1e-3)
    assert m["protected_false_block_rate_ci95"] == pytest.approx(m["ebike_recall_ci95"])
    ebike = m["per_class"]["ebike"]
    # Score order 0.9 TP, 0.8 TP, 0.75 FP, 0.7 FP, 0.6 FP, 0.4 TP → AP = 1/3 + 1/3 + 1/3 · 3/6.
    assert ebike["AP50"] == pytest.approx(1 / 3 + 1 / 3 + 1 / 6)
    assert ebike["precision"] == pytest.approx(2 / 5) and ebike["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["wheelchair"]["recall"] == 1.0
    assert m["false_block_by_class"]["bicycle"] == {"images": 1, "false_block_rate": 1.0}
    assert m["false_block_by_class"]["wheelchair"] == {"images": 1, "false_block_rate": 0.0}
    # Veto evidence per labelled box: working on the wheelchair, falsely on one of three e-bikes.
    veto = m["veto_evidence"]
    assert (veto["wheelchair"]["boxes"], veto["wheelchair"]["with_veto"]) == (1, 1)
    assert (veto["ebike"]["boxes"], veto["ebike"]["with_veto"]) == (3, 1)
    assert veto["ebike"]["rate"] == pytest.approx(1 / 3)
    assert veto["stroller"] == {"boxes": 0, "with_veto": 0, "rate": None, "rate_ci95": None}
    assert m["latency_640x480_runs"] == 5 and m["latency_ms_p95"] >= m["latency_ms_p50"] >= 0
    for name in ("metrics.json", "decisions.csv", "confusion.png", "pr_curves.png", "contact_sheet.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["ebike_recall"] == pytest.approx(1 / 3)
    rows = {r["image"]: r for r in csv.DictReader((out / "decisions.csv").open())}
    assert rows["a_ebike_hit.png"]["decided"] == "block" and rows["c_ebike_vetoed.png"]["decided"] == "allow"
    assert rows["e_bicycle.png"] == {"image": "e_bicycle.png", "expected": "allow", "decided": "block",
                                     "ebike_score": "0.7", "top_class": "bicycle", "top_score": "0.8"}


def test_truth_csv_and_threshold_override(folder: Path) -> None:
    truth = folder / "truth.csv"
    truth.write_text("image,expected\na_ebike_hit.png,block\nb_ebike_low.png,block\ne_bicycle.png,allow\n")
    m = evaluate("fake.onnx", folder / "images", folder / "out2", truth_csv=truth, thresholds={"ebike": 0.35},
                 detector=FakeDetector(), bench_runs=0)
    assert m["n_images"] == 3 and m["ebike_recall"] == 1.0 and m["false_block_rate"] == 1.0
    assert "per_class" not in m


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (40, 42, 0.8421, 0.9868),   # the shipped model's real-photo recall: 95 % measured, 84 % not ruled out
    (3, 503, 0.0020, 0.0174),   # its protected false blocks
    (0, 60, 0.0, 0.0602),       # none of 60 clips held: up to 6 % still plausible (3.84 / 63.84)
    (10, 10, 0.7225, 1.0),      # 10 / 13.84
])
def test_wilson_interval_matches_the_textbook_figures(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n) or (-1.0, -1.0)
    assert (lo, hi) == (pytest.approx(low, abs=2e-4), pytest.approx(high, abs=2e-4))


def test_no_images_no_interval() -> None:
    assert wilson_interval(0, 0) is None
