"""A contact sheet of generated samples with their boxes, for docs and eyeballing label quality.

Rendered without the cut-out bank, so it holds no dataset pixels and may be committed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tools.corpus import CLASSES
from tools.scenegen.cutouts import CutoutBank
from tools.scenegen.scene import render_scene

COLORS = ((0, 0, 255), (255, 160, 0), (0, 220, 0), (255, 0, 255), (0, 220, 255), (200, 200, 200))


def write_sheet(out: Path, seed: int = 3, n: int = 16, cols: int = 4) -> None:
    tiles = []
    for i in range(n):
        scene = render_scene(np.random.default_rng([seed, i]), CutoutBank.empty())
        img = scene.image.copy()
        for b in scene.boxes:
            c = COLORS[b.cls]
            cv2.rectangle(img, (int(b.x1), int(b.y1)), (int(b.x2), int(b.y2)), c, 2)
            cv2.putText(img, CLASSES[b.cls], (int(b.x1) + 2, int(b.y1) + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1,
                        cv2.LINE_AA)
        tiles.append(cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA))
    rows = [np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(n // cols)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows))
