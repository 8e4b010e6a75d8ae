"""Grouped folds over a corpus source: which images a cross-validation fold holds out, and which
generated scenes must go with them (they may show a held-out photo through a pasted cut-out).

Shared by `tools.crossval` (folds trained from cached features) and `tools.train_full` (folds trained
alongside the main model).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from tools.features import SYNTHETIC_PREFIX, Sample
from tools.grouping import grouped_folds


def sample_root(sample: Sample) -> Path:
    """The corpus a sample belongs to (ROOT/images/SPLIT/NAME)."""
    return sample.image.parent.parent.parent


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def leaky_synthetic(samples: Sequence[Sample], held: set[str]) -> set[int]:
    """Indices of generated scenes that may show a held-out photo through a pasted cut-out.

    With the data engine's cutouts.csv (file → cut-out source group) exactly those scenes go; without
    it every scene with a real e-bike cut-out goes (conservative: street-moped cut-outs go too).
    Samples may come from several corpora; each is read with its own files.
    """
    out: set[int] = set()
    for root in sorted({sample_root(s) for s in samples}):
        index = {s.image.name: i for i, s in enumerate(samples) if sample_root(s) == root}
        if (root / "cutouts.csv").exists():
            out |= {index[r["file"]] for r in _read_csv(root / "cutouts.csv")
                    if r["cutout_source_group"] in held and r["file"] in index}
        elif (root / "manifest.csv").exists():
            licences = {r["file"]: r.get("licence", "") for r in _read_csv(root / "manifest.csv")}
            out |= {i for name, i in index.items() if samples[i].source.startswith(SYNTHETIC_PREFIX)
                    and samples[i].has_ebike and "cut-out" in licences.get(name, "")}
    return out


def source_folds(real: Sequence[Sample], k: int) -> dict[str, int]:
    """The corpus's own grouped folds (folds.csv) when it has them, else ours."""
    path = sample_root(real[0]) / "folds.csv"
    if path.exists():
        rows = {r["source_group"]: int(r["fold"]) for r in _read_csv(path)}
        if all(s.group in rows for s in real):
            return {s.group: rows[s.group] for s in real}
    return grouped_folds([s.group for s in real], k)
