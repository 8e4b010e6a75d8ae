"""End-to-end training (tools.train_full): sampling, time budget, fold isolation, and a CPU smoke run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.synthcorpus import make_corpus
from tools import train_full
from tools.crossval import score_fold_models
from tools.export import load_run
from tools.features import Sample, load_split
from tools.model import CLASSIFIER_ONLY, LiftGuardDetector, compact_state, complete_state
from tools.train_full import EpochSampler, epochs_for_budget, make_members

EBIKE_BOX = np.array([[0, 0.1, 0.1, 0.5, 0.5]], np.float32)


def test_each_epoch_visits_every_view_once_and_carries_its_epoch_in_the_index() -> None:
    indices = list(EpochSampler(n=5, epochs=3, seed=0))
    assert len(indices) == 15
    for epoch in range(3):
        chunk = indices[epoch * 5 : (epoch + 1) * 5]
        assert sorted(i - epoch * 5 for i in chunk) == [0, 1, 2, 3, 4]
    # Each epoch is shuffled on its own: the epochs are not all in the same order.
    orders = {tuple(i % 5 for i in indices[e * 5 : (e + 1) * 5]) for e in range(3)}
    assert len(orders) > 1


def test_the_time_budget_buys_whole_epochs_within_bounds() -> None:
    assert epochs_for_budget(seconds=100, step_seconds=0.5, steps_per_epoch=20, max_epochs=40) == 10
    assert epochs_for_budget(seconds=100, step_seconds=0.5, steps_per_epoch=20, max_epochs=4) == 4
    assert epochs_for_budget(seconds=1, step_seconds=0.5, steps_per_epoch=20, max_epochs=40) == 1


@pytest.mark.parametrize("bad", [["--batch", "1"], ["--minutes", "-1"], ["--epochs", "0"], ["--lr", "0"]])
def test_training_numbers_outside_their_bounds_are_refused(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_full.parse_args(["--data", "d", "--out", "o", *bad])
    assert "is outside" in capsys.readouterr().err


def test_a_fold_model_never_trains_on_its_held_out_groups() -> None:
    train = [Sample(Path(f"/nowhere/images/train/{src}_{i}.jpg"), EBIKE_BOX, src, f"{src}/g{i // 2}")
             for src in ("elevator", "street") for i in range(10)]
    members = make_members(train, [], "elevator", None, seed=0)
    assert members[0].name == "main" and not members[0].excluded.any()
    held_by_fold = [set(m.held_groups) for m in members[1:]]
    assert set().union(*held_by_fold) == {f"elevator/g{k}" for k in range(5)}
    assert sum(len(h) for h in held_by_fold) == 5  # each group is held out by exactly one fold
    for m in members[1:]:
        excluded = {s.group for s, x in zip(train, m.excluded.tolist(), strict=True) if x}
        assert excluded == set(m.held_groups)  # street images and other folds' groups still train


def test_compacted_weights_complete_back_to_a_strictly_loadable_detector() -> None:
    net = LiftGuardDetector()
    small = compact_state(net.state_dict())
    assert not any(k.startswith(CLASSIFIER_ONLY) for k in small)
    assert all(v.dtype == torch.float16 for v in small.values() if v.is_floating_point())
    restored = LiftGuardDetector()
    restored.load_state_dict(complete_state(small), strict=True)
    key = "head.heat.2.weight"
    torch.testing.assert_close(restored.state_dict()[key], net.state_dict()[key], atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("train_full")
    # 14 views in batches of 4: 3 steps an epoch, but 2 epochs of indices make 7 batches. The run must
    # stop at the schedule's 6 steps (a GPU run once crashed at its last step on exactly this).
    data = make_corpus(tmp / "corpus", n_train=14, n_val=6)
    run = tmp / "run"
    assert train_full.main(["--data", str(data), "--out", str(run), "--epochs", "2", "--batch", "4",
                            "--copies", "1", "--ebike-extra", "0", "--workers", "0", "--device", "cpu",
                            "--cv-source", "synthetic", "--compact-folds", "--version", "test"]) == 0
    return data, run


def test_a_cpu_run_trains_every_layer_and_exports(full_run: tuple[Path, Path]) -> None:
    _, run = full_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recipe"] == "full" and metrics["epochs"] == 2 and metrics["steps_per_epoch"] == 3
    assert metrics["steps_run"] == 6  # not the 7th batch the sampler's 28 indices make
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in metrics["history"])
    model, ckpt = load_run(run)  # strict load of the full state dict, as tools.export does
    assert ckpt["version"] == "test" and set(ckpt["thresholds"]) >= {"ebike", "wheelchair"}
    imagenet = LiftGuardDetector()
    imagenet.backbone.load_pretrained()
    stem = "backbone._conv_stem.weight"
    assert not torch.equal(model.state_dict()[stem], imagenet.state_dict()[stem])  # the stem trained too
    for name in ("loss_curve.png", "pr_val.png", "train_log.csv"):
        assert (run / name).stat().st_size > 0
    last = torch.load(run / "last" / "main.pt", weights_only=False)
    assert last["epoch"] == 2  # the per-epoch safety copy of the final epoch
    assert sorted(p.name for p in (run / "last").glob("*.pt")) == ["fold0.pt", "fold1.pt", "fold2.pt", "fold3.pt",
                                                                   "fold4.pt", "main.pt"]


def test_fold_models_are_scored_on_exactly_their_held_out_images(full_run: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    data, run = full_run
    folds = sorted((run / "folds").glob("fold*.pt"))
    held = [torch.load(f, weights_only=False)["held_groups"] for f in folds]
    groups = Counter(g for h in held for g in h)
    samples = [s for split in ("train", "val") for s in load_split(data, split)]
    assert set(groups) == {s.group for s in samples} and set(groups.values()) == {1}
    summary = score_fold_models(run / "folds", data, tmp_path / "cv")
    assert sum(f["images"] for f in summary["folds"]) == len(samples)  # every image scored by one fold
    assert json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())["images"] == summary["images"]
