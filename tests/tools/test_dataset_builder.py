"""The dataset builder on a tiny fixture tree made here (no dependency on ../shared)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import pytest

from tests.tools.shared_sources import make_shared_sources
from tools.corpus import CLASS_ID, read_manifest
from tools.dataset_builder import build, write_folds
from tools.grouping import assign_splits, burst_groups, grouped_folds, stem_group


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    return make_shared_sources(tmp_path)


def _labels(out: Path) -> dict[str, list[list[float]]]:
    return {
        p.stem: [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
        for p in (out / "labels").glob("*/*.txt")
    }


def test_no_source_group_in_both_splits(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    rows = build(sources, out, val_fraction=0.3)
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r.source_group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {r.split for r in rows} == {"train", "val"}
    # The exported copies of one motorbike photo share a group.
    assert len({r.source_group for r in rows if r.source == "roboflow-motorbike-scooter"}) == 30
    # The tiny etoiles source still gets some val images (subset search, not hashing).
    assert {r.split for r in rows if r.source == "etoiles-elevator-ebike"} == {"train", "val"}


def test_class_mapping_and_label_ranges(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    build(sources, out)
    labels = _labels(out)
    motor = next(v for k, v in labels.items() if k.startswith("roboflow-motorbike-scooter"))
    # bike -> ebike (box and polygon line), bus and car dropped.
    assert [int(line[0]) for line in motor] == [CLASS_ID["ebike"], CLASS_ID["ebike"]]
    assert motor[1][1:] == pytest.approx([0.2, 0.3, 0.2, 0.2], abs=1e-4)
    lexra = next(v for k, v in labels.items() if k.startswith("lexra"))
    assert [int(line[0]) for line in lexra] == [CLASS_ID["wheelchair"], CLASS_ID["person"]]
    coco = next(v for k, v in labels.items() if k.startswith("coco128"))
    assert sorted(int(line[0]) for line in coco) == sorted([CLASS_ID["person"], CLASS_ID["bicycle"], CLASS_ID["ebike"]])
    et = next(v for k, v in labels.items() if k.startswith("etoiles"))
    assert [int(line[0]) for line in et] == [CLASS_ID["ebike"], CLASS_ID["person"]]
    assert et[0][1:] == pytest.approx([205 / 800, 305 / 600, 390 / 800, 570 / 600], abs=1e-4)
    for lines in labels.values():
        for cls, *coords in lines:
            assert 0 <= cls < 6
            assert all(0.0 <= c <= 1.0 for c in coords)
            assert coords[2] > 0 and coords[3] > 0


def test_layout_manifest_and_downscale(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    build(sources, out)
    rows = read_manifest(out)
    assert len(rows) == 5 + 60 + 20 + 1
    for r in rows:
        img = cv2.imread(str(out / "images" / r.split / r.file))
        assert img is not None and max(img.shape[:2]) <= 640
        n_lines = len((out / "labels" / r.split / f"{Path(r.file).stem}.txt").read_text().splitlines())
        assert n_lines == r.n_boxes
    text = (out / "data.yaml").read_text()
    assert "train: images/train" in text and "val: images/val" in text
    assert '"ebike", "bicycle", "wheelchair", "stroller", "person", "cart"' in text


def test_folds_keep_groups_together(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    rows = build(sources, out)
    write_folds(out, rows, 3)
    with (out / "folds.csv").open() as f:
        folds = list(csv.DictReader(f))
    fold_of_group: dict[str, set[str]] = {}
    for r in folds:
        fold_of_group.setdefault(r["source_group"], set()).add(r["fold"])
    assert all(len(v) == 1 for v in fold_of_group.values())
    assert len({r["fold"] for r in folds if r["source"] == "etoiles-elevator-ebike"}) == 3


def test_refuses_to_write_into_the_project(sources: Path) -> None:
    with pytest.raises(ValueError, match="project tree"):
        build(sources, Path(__file__).resolve().parents[2] / "should_not_exist")


@pytest.mark.parametrize(
    ("stem", "group"),
    [
        ("IMG-20240615-WA0010_jpg.rf.eace92fc898746178d2564390f23c65f", "IMG-20240615-WA0010"),
        ("3209R00N9QK0_grayscale_jpg.rf.607289aa6e20416f1e1d34cb261aaa06", "3209R00N9QK0"),
        ("photo-1-_jpg.rf.0123abcd", "photo"),
        ("00012", "00012"),
    ],
)
def test_stem_group(stem: str, group: str) -> None:
    assert stem_group(stem) == group


def test_burst_groups_split_on_gaps() -> None:
    groups = burst_groups(["Snipaste_2024-01-01_12-07-27", "Snipaste_2024-01-01_12-07-52",
                           "Snipaste_2024-01-01_12-20-00", "other"])
    assert groups["Snipaste_2024-01-01_12-07-52"] == "Snipaste_2024-01-01_12-07-27"
    assert groups["Snipaste_2024-01-01_12-20-00"] == "Snipaste_2024-01-01_12-20-00"
    assert groups["other"] == "other"


def test_small_source_split_and_folds_are_balanced() -> None:
    sizes = {"a": 12, "b": 2, "c": 6, "d": 7, "e": 1}
    splits = assign_splits(sizes, 0.15)
    val = sum(sizes[g] for g, s in splits.items() if s == "val")
    assert 0 < val < sum(sizes.values())
    folds = grouped_folds([g for g, n in sizes.items() for _ in range(n)], 3)
    assert set(folds.values()) == {0, 1, 2}


def test_cli_writes_corpus_and_folds(sources: Path, tmp_path: Path) -> None:
    from tools.dataset_builder import main

    assert main(["--src", str(sources), "--out", str(tmp_path / "c"), "--folds", "3"]) == 0
    assert (tmp_path / "c" / "folds.csv").exists() and (tmp_path / "c" / "manifest.csv").exists()
