"""Build one YOLO-format corpus from the shared training sources.

    python -m tools.dataset_builder --src ../shared/datasets --out /work/data/real_v1 [--folds 5]

Images are downscaled to a max side of 640 and re-encoded as JPEG; the split is decided per source
group (see tools/grouping.py) so near-duplicates never straddle train and val. The output lives
outside the project tree: the sources' licences forbid redistributing them.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
from pathlib import Path

from tqdm import tqdm

from tools.corpus import FOLDS_CSV, CorpusWriter, ManifestRow, class_counts, fit_max_side
from tools.grouping import assign_splits, grouped_folds
from tools.sources import READERS, SourceImage, iter_sources

log = logging.getLogger(__name__)
MAX_SIDE = 640
DEFAULT_VAL_FRACTION = 0.15


def output_name(item: SourceImage) -> str:
    """A corpus-unique, filesystem-safe name: source + sub-folder + stem."""
    parent = item.path.parent.name if item.path.parent.name not in ("images",) else item.path.parent.parent.name
    raw = f"{item.source}__{parent}__{item.path.stem}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def plan_splits(items: list[SourceImage], val_fraction: float) -> dict[str, str]:
    """Group -> split for every group of ``items``, decided per source (see ``assign_splits``)."""
    splits: dict[str, str] = {}
    for source in sorted({i.source for i in items}):
        sizes: dict[str, int] = {}
        for i in items:
            if i.source == source:
                sizes[i.group] = sizes.get(i.group, 0) + 1
        splits.update(assign_splits(sizes, val_fraction))
    return splits


def build(src: Path, out: Path, val_fraction: float = DEFAULT_VAL_FRACTION,
          only: set[str] | None = None, max_side: int = MAX_SIDE) -> list[ManifestRow]:
    if out.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        raise ValueError("refusing to write licensed data inside the project tree")
    writer = CorpusWriter(out)
    items = list(iter_sources(src, only))
    if not items:
        raise FileNotFoundError(f"no known sources under {src} (expected some of {sorted(READERS)})")
    splits = plan_splits(items, val_fraction)
    for item in tqdm(items, desc="build", unit="img"):
        image = item.load()
        h, w = image.shape[:2]
        boxes = item.pixel_boxes(w, h)
        image, factor = fit_max_side(image, max_side)
        split = splits[item.group]
        writer.add(output_name(item), image, [b.scaled(factor) for b in boxes], split,
                   item.source, item.group, item.licence)
    writer.finish()
    return writer.rows


def write_folds(out: Path, rows: list[ManifestRow], k: int) -> None:
    """``folds.csv``: a grouped K-fold assignment per source (whole groups per fold)."""
    by_source: dict[str, list[ManifestRow]] = {}
    for r in rows:
        by_source.setdefault(r.source, []).append(r)
    with (out / FOLDS_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "source", "source_group", "fold"])
        for source in sorted(by_source):
            group_rows = by_source[source]
            fold_of = grouped_folds([r.source_group for r in group_rows], k)
            for r in sorted(group_rows, key=lambda r: r.file):
                w.writerow([r.file, r.source, r.source_group, fold_of[r.source_group]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="folder holding the shared dataset folders")
    parser.add_argument("--out", type=Path, required=True, help="corpus root to write (outside the project)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--folds", type=int, default=0, help="also write folds.csv with a grouped K-fold")
    parser.add_argument("--only", nargs="*", choices=sorted(READERS), help="restrict to these sources")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rows = build(args.src, args.out, args.val_fraction, set(args.only) if args.only else None, args.max_side)
    if args.folds:
        write_folds(args.out, rows, args.folds)
    for split, counts in class_counts(args.out).items():
        log.info("%s: %s", split, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
