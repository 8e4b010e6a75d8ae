"""A tiny generated YOLO corpus for fast tests: coloured shapes on noise, one shape colour per class."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ["ebike", "bicycle", "wheelchair", "stroller", "person", "cart"]
COLOURS = [(0, 0, 230), (0, 200, 0), (230, 0, 0), (0, 200, 200), (200, 0, 200), (200, 200, 0)]


def make_corpus(
    root: Path, n_train: int = 16, n_val: int = 4, seed: int = 0, size: tuple[int, int] = (160, 120),
    source: str = "synthetic",
) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    rows = ["file,split,source,source_group,licence,n_boxes"]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(60, 140, (h, w, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                c = int(rng.integers(0, 2)) if i % 2 == 0 else int(rng.integers(0, len(CLASSES)))
                bw, bh = int(rng.integers(30, 70)), int(rng.integers(30, 60))
                x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                cv2.rectangle(img, (x1, y1), (x1 + bw, y1 + bh), COLOURS[c], -1)
                lines.append(f"{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            name = f"synth_{split}_{i:03d}" if source == "synthetic" else f"{source}_{split}_{i:03d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), img)
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines))
            rows.append(f"{name}.jpg,{split},{source},synth/{i},CC0,{len(lines)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    names = ", ".join(f'"{c}"' for c in CLASSES)
    (root / "data.yaml").write_text(f"nc: {len(CLASSES)}\nnames: [{names}]\n")
    return root


def train_tiny(tmp: Path, n_train: int, n_val: int, epochs: int, batch: int = 8, *extra: str) -> tuple[Path, Path]:
    """A tiny corpus under `tmp` and a seeded training run on it; returns (corpus, run dir)."""
    from tools import train

    data = make_corpus(tmp / "corpus", n_train=n_train, n_val=n_val)
    run = tmp / "run"
    assert train.main(["--data", str(data), "--out", str(run), "--epochs", str(epochs), "--copies", "1",
                       "--ebike-extra", "0", "--batch", str(batch), "--seed", "0", *extra]) == 0
    return data, run
