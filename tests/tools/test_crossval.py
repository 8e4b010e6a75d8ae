"""Cross-validation helpers: grouped folds and the per-fold training-view cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.synthcorpus import train_tiny
from tools.crossval import cap_views, run_cv
from tools.features import Sample, load_split
from tools.grouping import grouped_folds

EBIKE_BOX = np.array([[0, 0.1, 0.1, 0.5, 0.5]], np.float32)
PERSON_BOX = np.array([[4, 0.1, 0.1, 0.3, 0.6]], np.float32)


def _sample(name: str, source: str, boxes: np.ndarray) -> Sample:
    return Sample(Path(f"/corpus/images/train/{name}.jpg"), boxes, source, f"{source}/{name}")


def test_folds_keep_each_group_whole_and_balance_sizes() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    folds = grouped_folds(groups, 2)
    assert set(folds) == {"a", "b", "c", "d"}
    sizes = [sum(groups.count(g) for g, f in folds.items() if f == k) for k in (0, 1)]
    assert sorted(sizes) == [5, 6]


def test_view_cap_keeps_every_real_ebike_view_and_samples_the_rest() -> None:
    samples = [_sample("real_ebike", "etoiles", EBIKE_BOX), _sample("street", "wheelchairs", PERSON_BOX),
               *[_sample(f"gen{i}", "scenegen-v2", EBIKE_BOX) for i in range(10)]]
    sample_index = torch.tensor([0, 0, 0, *range(1, 12)])  # three cached views of the real e-bike photo
    keep = torch.ones(len(sample_index), dtype=torch.bool)
    keep[5] = False  # a view of a held-out fold stays out whatever the cap
    capped = cap_views(keep, samples, sample_index, max_views=6, seed=0)
    assert int(capped.sum()) == 6
    assert capped[:3].all() and not capped[5]
    assert not (capped & ~keep).any()
    assert torch.equal(cap_views(keep, samples, sample_index, max_views=6, seed=0), capped)
    assert torch.equal(cap_views(keep, samples, sample_index, max_views=0, seed=0), keep)


@pytest.mark.slow
def test_cross_validation_scores_every_held_out_image_with_a_model_that_never_saw_it(tmp_path: Path) -> None:
    data, run = train_tiny(tmp_path, 12, 3, 1, 8, "--ebike-weight", "2")
    summary = run_cv(run, tmp_path / "cv", folds=3, epochs=1, seed=0, source="synthetic", max_views=8)
    folds = summary["folds"]
    assert len(folds) == 3
    held = [g for f in folds for g in f["groups"]]
    samples = load_split(data, "train") + load_split(data, "val")
    assert sorted(held) == sorted({s.group for s in samples}), "each image group is held out exactly once"
    for f in folds:
        # A fold trains on the other folds' views only (capped at 8), never on its own groups.
        assert f["train_views"] <= 8
        assert (tmp_path / "cv" / f"fold{f['fold']}" / "model.onnx").is_file()
    assert summary["images"] == sum(1 for s in samples if s.has_ebike)
    recorded = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert recorded["max_views"] == 8
    assert recorded["ebike_weight"] == 2.0, "each fold trains with the run's own e-bike weight"


def test_a_run_started_from_another_detector_is_refused(tmp_path: Path) -> None:
    # Its frozen layers were trained (tools.train --init) on the very photos a fold would hold out.
    torch.save({"init": "0.5.0", "state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"started from detector 0\.5\.0"):
        run_cv(tmp_path, tmp_path / "cv", folds=3, epochs=1, seed=0)
