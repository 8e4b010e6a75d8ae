"""Leave-one-source-out with trained features: no fold ever trains on a pixel of the source it is scored on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tools.synthcorpus import make_corpus
from tools import loso_train
from tools.corpus import read_manifest
from tools.features import Sample
from tools.loso import Fold

EBIKES, BICYCLES, WHEELCHAIRS = "etoiles-elevator-ebike", "roboflow-bicycle", "lexra-wheelchair"


def three_sources(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    for k, name in enumerate((EBIKES, BICYCLES, WHEELCHAIRS)):
        make_corpus(root / name, n_train=n_train, n_val=n_val, seed=k, source=name)
    return root


def composites(root: Path, uses: str) -> Path:
    make_corpus(root, n_train=4, n_val=0, seed=9, source="scenegen-composite")
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("synth/", f"composite/{uses}|"))
    return root


def test_a_fold_corpus_holds_every_other_source_and_clean_composites(tmp_path: Path) -> None:
    sources = loso_train.source_dirs(three_sources(tmp_path / "src"))
    n = loso_train.fold_corpus(sources, EBIKES, composites(tmp_path / "comp", BICYCLES), tmp_path / "fold")
    rows = read_manifest(tmp_path / "fold")
    assert n == len(rows) == 2 * 8 + 4
    assert {r.source for r in rows} == {BICYCLES, WHEELCHAIRS, "scenegen-composite"}


def test_composites_carrying_the_held_out_pixels_are_refused(tmp_path: Path) -> None:
    sources = loso_train.source_dirs(three_sources(tmp_path / "src"))
    with pytest.raises(ValueError, match="--exclude-source etoiles-elevator-ebike"):
        loso_train.fold_corpus(sources, EBIKES, composites(tmp_path / "comp", EBIKES), tmp_path / "fold")
    with pytest.raises(ValueError, match="not among"):
        loso_train.fold_corpus(sources, "coco128", None, tmp_path / "fold2")


def test_images_are_kinds_by_the_loso_rule() -> None:
    def sample(source: str, *classes: int) -> Sample:
        boxes = np.array([[c, 0.1, 0.1, 0.5, 0.5] for c in classes], np.float32).reshape(-1, 5)
        return Sample(Path("x.jpg"), boxes, source, "g")

    assert loso_train.sample_kind(sample(BICYCLES, 0, 1)) == "ebike"
    assert loso_train.sample_kind(sample(BICYCLES)) == "protected", "a protected source's empty photo counts"
    assert loso_train.sample_kind(sample("coco128", 4)) == "protected"
    assert loso_train.sample_kind(sample("coco128")) == "background"


def test_a_fold_threshold_comes_from_the_other_folds_protected_images() -> None:
    ebike = Fold(EBIKES, ["ebike"] * 4, np.array([0.9, 0.6, 0.3, 0.1]), 0, 0)
    bikes = Fold(BICYCLES, ["protected"] * 10, np.array([0.55] + [0.05] * 9), 0, 0)
    row = loso_train.fold_table(ebike, 0.5, [bikes], budget=0.0)
    assert row["trainer_threshold"]["ebike_recall"]["k"] == 2
    other = row["other_folds_threshold"]
    assert other["threshold"] == pytest.approx(0.56) and other["set_on_protected_images"] == 10
    assert other["ebike_recall"]["k"] == 2 and other["protected_false_blocks"]["n"] == 0
    assert "other_folds_threshold" not in loso_train.fold_table(bikes, 0.5, [ebike], budget=0.0)


def test_each_fold_trains_exports_and_scores_its_unseen_source(tmp_path: Path) -> None:
    src = three_sources(tmp_path / "src", n_train=4, n_val=1)
    out = tmp_path / "results" / "tail"
    assert loso_train.main(["--sources", str(src), "--held", EBIKES, "--held", BICYCLES,
                            "--runs", str(tmp_path / "runs"), "--out", str(out), "--epochs", "1",
                            "--train-arg=--copies=1", "--train-arg=--ebike-extra=0", "--train-arg=--batch=4"]) == 0
    for held in (EBIKES, BICYCLES):
        trained = {r.source for r in read_manifest(tmp_path / "runs" / held / "corpus")}
        assert held not in trained and len(trained) == 2
        assert (tmp_path / "runs" / held / "model.onnx").exists()
    result = json.loads(out.with_suffix(".json").read_text())
    by_source = {r["source"]: r for r in result["folds"]}
    assert by_source[EBIKES]["images"] == by_source[BICYCLES]["images"] == 5, "every image of the held source"
    assert "other_folds_threshold" in by_source[EBIKES]
    assert 0.0 < by_source[EBIKES]["trainer_threshold"]["threshold"] <= 1.0
    assert "| etoiles-elevator-ebike |" in out.with_suffix(".md").read_text()
