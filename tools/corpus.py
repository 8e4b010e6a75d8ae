"""The YOLO-format corpus layout shared by the dataset builder, the scene generator and the trainer.

Layout under a corpus root::

    images/{train,val}/NAME.jpg   labels/{train,val}/NAME.txt   data.yaml   manifest.csv

A label line is ``class cx cy w h`` with coordinates normalised to [0, 1]. ``manifest.csv`` has one
row per image so that a consumer can filter by source, group or licence without opening images.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("ebike", "bicycle", "wheelchair", "stroller", "person", "cart")
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST_FIELDS: tuple[str, ...] = ("file", "split", "source", "source_group", "licence", "n_boxes")
# Optional side tables a merge carries over: grouped folds of real images, origins of pasted cut-outs.
FOLDS_CSV = "folds.csv"
CUTOUTS_CSV = "cutouts.csv"
# Boxes narrower or shorter than this (in output pixels) carry no learnable signal.
MIN_BOX_PX = 2.0


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the image it belongs to."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float

    def clipped(self, width: int, height: int) -> Box | None:
        """The box clipped to the image, or None when too little of it is left."""
        x1, x2 = max(0.0, self.x1), min(float(width), self.x2)
        y1, y2 = max(0.0, self.y1), min(float(height), self.y2)
        if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
            return None
        return Box(self.cls, x1, y1, x2, y2)

    def scaled(self, factor: float) -> Box:
        return Box(self.cls, self.x1 * factor, self.y1 * factor, self.x2 * factor, self.y2 * factor)


@dataclass(frozen=True)
class ManifestRow:
    file: str
    split: str
    source: str
    source_group: str
    licence: str
    n_boxes: int


def yolo_lines(boxes: Sequence[Box], width: int, height: int) -> str:
    """Label file text for boxes already clipped to a ``width`` x ``height`` image."""
    lines = []
    for b in boxes:
        cx = (b.x1 + b.x2) / 2 / width
        cy = (b.y1 + b.y2) / 2 / height
        w = (b.x2 - b.x1) / width
        h = (b.y2 - b.y1) / height
        lines.append(f"{b.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def fit_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most ``max_side``; returns the image and the factor used."""
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, factor


class CorpusWriter:
    """Writes images, labels and manifest rows into one corpus root."""

    def __init__(self, root: Path, jpeg_quality: int = 90) -> None:
        self.root = root
        self.jpeg_quality = jpeg_quality
        self.rows: list[ManifestRow] = []
        for split in SPLITS:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)

    def add(
        self, name: str, image: np.ndarray, boxes: Sequence[Box], split: str,
        source: str, group: str, licence: str,
    ) -> ManifestRow:
        """Clip boxes, write ``name``.jpg and its label file, and remember the manifest row."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        h, w = image.shape[:2]
        kept = [c for b in boxes if (c := b.clipped(w, h)) is not None]
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        (self.root / "images" / split / f"{name}.jpg").write_bytes(jpg.tobytes())
        (self.root / "labels" / split / f"{name}.txt").write_text(yolo_lines(kept, w, h))
        row = ManifestRow(f"{name}.jpg", split, source, group, licence, len(kept))
        self.rows.append(row)
        return row

    def finish(self) -> None:
        write_manifest(self.root, self.rows)
        write_data_yaml(self.root)


def write_manifest(root: Path, rows: Iterable[ManifestRow]) -> None:
    ordered = sorted(rows, key=lambda r: (r.split, r.file))
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_FIELDS)
        for r in ordered:
            writer.writerow([r.file, r.split, r.source, r.source_group, r.licence, r.n_boxes])


def read_manifest(root: Path) -> list[ManifestRow]:
    with (root / "manifest.csv").open(newline="") as f:
        return [
            ManifestRow(r["file"], r["split"], r["source"], r["source_group"], r["licence"], int(r["n_boxes"]))
            for r in csv.DictReader(f)
        ]


def write_data_yaml(root: Path) -> None:
    names = ", ".join(f'"{n}"' for n in CLASSES)
    (root / "data.yaml").write_text(
        f"# YOLO dataset description written by tools/corpus.py\n"
        f"path: {root.resolve()}\n"
        f"train: images/train\n"
        f"val: images/val\n"
        f"nc: {len(CLASSES)}\n"
        f"names: [{names}]\n"
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    # Hard links keep a merged corpus from doubling the disk use of its inputs.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_corpora(out: Path, sources: Sequence[Path]) -> list[ManifestRow]:
    """Union of several corpora; file names must be unique across them (sources prefix their names)."""
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for src in sources:
        for row in read_manifest(src):
            if row.file in seen:
                raise ValueError(f"{row.file} appears in more than one corpus; cannot merge")
            seen.add(row.file)
            stem = Path(row.file).stem
            for kind, name in (("images", row.file), ("labels", f"{stem}.txt")):
                dst = out / kind / row.split / name
                if dst.exists():
                    dst.unlink()
                _link_or_copy(src / kind / row.split / name, dst)
            rows.append(row)
    write_manifest(out, rows)
    write_data_yaml(out)
    for table in (FOLDS_CSV, CUTOUTS_CSV):
        _merge_table(out, sources, table)
    return rows


def _merge_table(out: Path, sources: Sequence[Path], name: str) -> None:
    """Concatenate a side table (same header in every source) into the merged corpus."""
    lines: list[str] = []
    header = ""
    for src in sources:
        path = src / name
        if path.exists():
            head, *body = path.read_text().splitlines()
            header = header or head
            lines.extend(body)
    if header:
        (out / name).write_text("\n".join([header, *lines]) + "\n")


def class_counts(root: Path) -> dict[str, dict[str, int]]:
    """Boxes per class per split, plus an ``images`` entry, read back from the label files."""
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        c = dict.fromkeys((*CLASSES, "images"), 0)
        for label in (root / "labels" / split).glob("*.txt"):
            c["images"] += 1
            for line in label.read_text().splitlines():
                if line.strip():
                    c[CLASSES[int(line.split()[0])]] += 1
        counts[split] = c
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.corpus merge OUT SRC [SRC ...]`: one training corpus from several (hard links)."""
    ap = argparse.ArgumentParser(prog="python -m tools.corpus", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    merge = sub.add_parser("merge", help="union of corpora whose file names are unique across them")
    merge.add_argument("out", type=Path)
    merge.add_argument("sources", type=Path, nargs="+")
    args = ap.parse_args(argv)
    rows = merge_corpora(args.out, args.sources)
    print(f"{len(rows)} images from {len(args.sources)} corpora in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
