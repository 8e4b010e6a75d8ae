"""Write N generated scenes as a YOLO corpus (same layout as tools.dataset_builder)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tools.corpus import CLASSES, CUTOUTS_CSV, CorpusWriter, ManifestRow
from tools.scenegen.cutouts import CutoutBank
from tools.scenegen.scene import SceneConfig, render_scene

SOURCE = "scenegen"
LICENCE_PROCEDURAL = "generated (LiftGuard, Apache-2.0)"
LICENCE_CUTOUTS = "generated + real cut-outs (CC BY 4.0 / unstated): training only, do not redistribute"


def scene_split(seed: int, index: int, val_fraction: float) -> str:
    # A stream of its own, so the split of image i never depends on how image i is drawn.
    return "val" if np.random.default_rng([seed, index, 1]).random() < val_fraction else "train"


def generate(out: Path, n: int, seed: int, val_fraction: float, bank: CutoutBank,
             cfg: SceneConfig | None = None, progress: bool = True) -> list[ManifestRow]:
    """Write the corpus, plus ``cutouts.csv``: which real photo (source group) each pasted cut-out
    came from, so cross-validation can drop just the scenes that carry a held-out photo."""
    writer = CorpusWriter(out)
    origins: list[tuple[str, str, str, str]] = []
    for i in tqdm(range(n), desc="scenegen", unit="img", disable=not progress):
        split = scene_split(seed, i, val_fraction)
        scene = render_scene(np.random.default_rng([seed, i]), bank, split, cfg)
        name = f"scenegen_s{seed}_{i:06d}"
        writer.add(name, scene.image, scene.boxes, split, SOURCE,
                   f"scenegen/s{seed}/{i}", LICENCE_CUTOUTS if scene.used_cutouts else LICENCE_PROCEDURAL)
        origins.extend((f"{name}.jpg", split, CLASSES[cls], group) for cls, group in scene.cutout_origins)
    writer.finish()
    with (out / CUTOUTS_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "class", "cutout_source_group"])
        w.writerows(origins)
    return writer.rows
