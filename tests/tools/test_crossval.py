"""Cross-validation helpers: grouped folds and the per-fold training-view cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tools.crossval import cap_views, grouped_folds
from tools.features import Sample

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
