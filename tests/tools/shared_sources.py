"""A tiny stand-in for ../shared/datasets: a few images per source, in each source's own layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _img(path: Path, w: int = 800, h: int = 600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _voc(path: Path, objects: list[tuple[str, int, int, int, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        f"</bndbox></object>" for n, a, b, c, d in objects
    )
    path.write_text(f"<annotation><size><width>800</width><height>600</height></size>{objs}</annotation>")


def make_shared_sources(root: Path) -> Path:
    src = root / "datasets"
    et = src / "etoiles-elevator-ebike"
    for stamp in ("2024-01-01_12-07-27", "2024-01-01_12-07-52", "2024-01-02_10-31-29", "2024-01-02_10-35-17",
                  "2024-01-02_10-38-20"):
        _img(et / "images" / f"Snipaste_{stamp}.png")
        _voc(et / "annotations" / f"Snipaste_{stamp}.xml", [("ebike", 10, 20, 400, 590), ("person", 500, 10, 700, 500)])
    mb = src / "roboflow-motorbike-scooter"
    (mb / "train" / "labels").mkdir(parents=True)
    for i in range(30):
        for copy in ("aaa1", "bbb2"):  # two exported copies of one photo: must share a group
            stem = f"IMG_{i:03d}_jpg.rf.{copy}"
            _img(mb / "train" / "images" / f"{stem}.jpg", 640, 640)
            (mb / "train" / "labels" / f"{stem}.txt").write_text(
                "0 0.5 0.5 0.2 0.3\n2 0.3 0.3 0.1 0.1\n1 0.1 0.1 0.1 0.1\n0 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4"
            )
    lx = src / "lexra-wheelchair" / "kaggle"
    for i in range(20):
        _img(lx / f"{i:05d}.jpg", 300, 200)
        (lx / f"{i:05d}.txt").write_text("1 0.5 0.5 0.4 0.6\n0 0.2 0.5 0.1 0.9")
    coco = src / "coco128"
    _img(coco / "images" / "train2017" / "000000000001.jpg", 640, 480)
    (coco / "labels" / "train2017").mkdir(parents=True)
    (coco / "labels" / "train2017" / "000000000001.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n3 0.7 0.7 0.1 0.1\n24 0.1 0.1 0.05 0.05\n"
    )
    return src
