"""Crop-level leave-one-source-out: crops follow their boxes, folds never train on the held-out source, and
thresholds come from the other folds' protected crops only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import tools.loso_crops as lc
from tools.corpus import Box
from tools.loso import fit_head as real_fit
from tools.sources import SourceImage


def _image(tmp_path: Path, name: str) -> Path:
    img = np.full((200, 300, 3), 30, np.uint8)
    img[50:150, 100:180] = (0, 0, 255)  # a red object (BGR) where the box is
    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), img)
    return path


def test_square_crop_centres_the_box_with_context() -> None:
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[50:150, 100:180] = 255
    crop = lc.square_crop(rgb, (100, 50, 180, 150), lc.CONTEXT, lc.CROP)
    assert crop.shape == (lc.CROP, lc.CROP, 3)
    # The box's longer side (100 px) spans 224 / 1.15 ≈ 195 px of the crop, centred.
    rows = np.flatnonzero(crop[:, lc.CROP // 2, 0] > 128)
    assert abs(len(rows) - lc.CROP / lc.CONTEXT) <= 3
    assert abs((rows[0] + rows[-1]) / 2 - lc.CROP / 2) <= 2


def test_augmented_copies_keep_the_crop_size_and_differ_from_the_plain_crop() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    plain = lc.square_crop(rgb, (100, 50, 180, 150), lc.CONTEXT, lc.CROP)
    views = [lc.augment_crop(rgb, (100, 50, 180, 150), np.random.default_rng(s)) for s in range(3)]
    assert all(v.shape == (lc.CROP, lc.CROP, 3) and v.dtype == np.uint8 for v in views)
    assert all(not np.array_equal(v, plain) for v in views)


def test_plan_caps_each_source_and_class_and_adds_background_and_copies(tmp_path: Path) -> None:
    items = [SourceImage("s", f"s/{i}", _image(tmp_path, f"s{i}"), "x",
                         (Box(0, 100, 50, 180, 150), Box(4, 10, 10, 40, 60)))
             for i in range(5)]
    crops = lc.plan_crops(items, cap=3, person_cap=2, bg_per_source=1, aug=2, seed=0)
    plain = [c for c in crops if c.copy == 0]
    assert sum(c.cls == 0 for c in plain) == 3
    assert sum(c.cls == 4 for c in plain) == 2
    assert sum(c.cls == lc.BACKGROUND for c in plain) <= 1
    assert len(crops) == 3 * len(plain)  # plain + 2 augmented each


def test_features_are_one_pooled_vector_per_crop_from_the_real_backbone(tmp_path: Path) -> None:
    items = [SourceImage("s", "s/0", _image(tmp_path, "a"), "x", (Box(0, 100, 50, 180, 150),))]
    crops = lc.plan_crops(items, cap=5, person_cap=5, bg_per_source=0, aug=1, seed=0)
    x = lc.extract(crops, lc.CropFeatures(), seed=0)
    assert x.shape == (2, 1280)
    assert np.isfinite(x).all() and (x >= 0).all() and (x <= 6).all()  # ReLU6 then mean
    lc.save_store(tmp_path / "store", crops, x)
    back, xb = lc.load_store(tmp_path / "store")
    assert back == crops
    np.testing.assert_allclose(xb, x, atol=1e-2, rtol=1e-2)


def _synthetic(sources: dict[str, list[int]], rng: np.random.Generator) -> tuple[list[lc.Crop], np.ndarray]:
    """Crops whose features carry their class (separable) and their source id (column 0)."""
    crops, xs = [], []
    for k, (s, classes) in enumerate(sources.items()):
        for c in classes:
            for copy in (0, 1):
                crops.append(lc.Crop(s, f"{s}.png", c, (0, 0, 10, 10), copy))
                v = rng.normal(0, 0.1, 8)
                v[0] = k
                v[1 + c] += 3.0
                xs.append(v)
    return crops, np.asarray(xs, np.float32)


def test_no_fold_trains_on_its_held_out_source(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    crops, x = _synthetic({"a": [0] * 10 + [2] * 10, "b": [0] * 10 + [1] * 10, "c": [3] * 10 + [4] * 10}, rng)
    seen: list[set[int]] = []

    def spy(xt: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> object:
        seen.append(set(np.round(xt[:, 0]).astype(int).tolist()))
        return real_fit(xt, y, l2)

    monkeypatch.setattr(lc, "fit_head", spy)
    folds = lc.run_folds(crops, x)
    assert [f.source for f in folds] == ["a", "b", "c"]
    assert seen == [{1, 2}, {0, 2}, {0, 1}]
    assert all(len(f.scores) == 20 for f in folds)  # plain crops only
    # Separable features: every held-out e-bike is found and no protected crop is held.
    s = lc.summarise(folds, 0.01)
    assert s["pooled"]["ebike_recall"]["k"] == 20
    assert s["pooled"]["protected_false_blocks"]["k"] == 0


def test_a_folds_threshold_ignores_its_own_scores() -> None:
    cls = np.array([0, 0, 1, 1])
    folds = [lc.CropFold("a", cls, np.array([0.9, 0.9, 0.99, 0.99]), 1),  # own protected score is high
             lc.CropFold("b", cls, np.array([0.9, 0.9, 0.1, 0.2]), 1)]
    rows = {r["source"]: r for r in lc.summarise(folds, 0.0)["per_source"]}
    assert rows["a"]["threshold_from_other_folds"] == pytest.approx(0.202)  # from b's protected crops only
    assert rows["a"]["ebike_recall"]["k"] == 2 and rows["a"]["protected_false_blocks"]["k"] == 2
    assert rows["b"]["threshold_from_other_folds"] > 0.99
