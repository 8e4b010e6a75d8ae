"""Reading image folders and YOLO label files: shared by training and `liftguard eval` (numpy only, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_yolo_labels(path: Path, width: int, height: int) -> np.ndarray:
    """YOLO txt → [N, 5] pixel boxes; polygon lines (more than 5 fields) become their bounding box."""
    rows: list[list[float]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 5:
                continue
            cls, vals = int(float(parts[0])), [float(v) for v in parts[1:]]
            if len(vals) == 4:
                cx, cy, w, h = vals
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            else:
                xs, ys = vals[0::2], vals[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            rows.append([cls, x1 * width, y1 * height, x2 * width, y2 * height])
    return np.array(rows, np.float32).reshape(-1, 5)
