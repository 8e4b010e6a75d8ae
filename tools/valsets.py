"""Split a corpus's validation images by origin, for scoring each kind on its own.

    python -m tools.valsets --data /work/data/corpus_v2 --out /work/runs/valsets/v2

Writes OUT/val_real/{images,labels} (real photos) and OUT/val_synth/{images,labels} (generated
scenes, manifest `source` starting with `scenegen`) as links into the corpus, each ready for
`liftguard eval --images … --labels …`. Generated scenes score differently from real photos, so a
model is reported on each separately (models/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tools.corpus import read_manifest
from tools.features import SYNTHETIC_PREFIX

REAL, SYNTH = "val_real", "val_synth"


def split_val(corpus: Path, out: Path) -> Counter[str]:
    """Link every val image and its label into OUT/val_real or OUT/val_synth; returns the counts."""
    counts: Counter[str] = Counter()
    for row in read_manifest(corpus):
        if row.split != "val":
            continue
        subset = SYNTH if row.source.startswith(SYNTHETIC_PREFIX) else REAL
        label = Path(row.file).stem + ".txt"
        for kind, name in (("images", row.file), ("labels", label)):
            target = (corpus / kind / "val" / name).resolve()
            if not target.exists():
                raise FileNotFoundError(f"{target} is in {corpus}/manifest.csv but not on disk")
            link = out / subset / kind / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(target, link)
        counts[subset] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="corpus root (images/, labels/, manifest.csv)")
    ap.add_argument("--out", type=Path, required=True, help="folder for val_real/ and val_synth/")
    args = ap.parse_args(argv)
    counts = split_val(args.data, args.out)
    print(f"{args.out}: {counts[REAL]} real val images in {REAL}/, {counts[SYNTH]} generated in {SYNTH}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
