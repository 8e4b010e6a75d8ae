"""Readers for the shared training sources; each yields ``SourceImage`` records in LiftGuard classes.

Class mapping follows the product policy: anything motorised on two wheels (e-bike, e-scooter,
moped, motorcycle) is ``ebike``; cars and buses are dropped (they never enter an elevator). Images
left without boxes are kept as negatives.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tools.corpus import CLASS_ID, Box
from tools.grouping import burst_groups, stem_group

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class SourceImage:
    source: str
    group: str
    path: Path
    licence: str
    boxes: tuple[Box, ...]  # pixels of the original image, or [0, 1] units when ``normalised``
    # Polygons (pixel coordinates) where the source has masks; used for copy-paste cut-outs.
    polygons: tuple[tuple[int, np.ndarray], ...] = ()
    # YOLO sources keep normalised boxes so that listing a source needs no image decode.
    normalised: bool = False

    def pixel_boxes(self, width: int, height: int) -> list[Box]:
        if not self.normalised:
            return list(self.boxes)
        return [Box(b.cls, b.x1 * width, b.y1 * height, b.x2 * width, b.y2 * height) for b in self.boxes]

    def load(self) -> np.ndarray:
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {self.path}")
        return image


def parse_yolo_labels(text: str, width: int, height: int, class_map: dict[int, int]) -> list[Box]:
    """YOLO txt lines (boxes or polygons) to pixel boxes; classes missing from ``class_map`` dropped."""
    boxes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        src_cls = int(float(parts[0]))
        if src_cls not in class_map:
            continue
        values = [float(v) for v in parts[1:]]
        if len(values) == 4:
            cx, cy, w, h = values
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:  # a polygon line: x1 y1 x2 y2 ... -> its bounding box
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        boxes.append(Box(class_map[src_cls], x1 * width, y1 * height, x2 * width, y2 * height))
    return boxes


def _yolo_folder(
    source: str, licence: str, image_dir: Path, label_dir: Path, class_map: dict[int, int],
    group_prefix: str,
) -> Iterator[SourceImage]:
    if not image_dir.is_dir():  # partial copies of a source (a split left out) are fine
        return
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        label = label_dir / f"{path.stem}.txt"
        text = label.read_text() if label.exists() else ""
        boxes = parse_yolo_labels(text, 1, 1, class_map)
        yield SourceImage(
            source, f"{group_prefix}/{stem_group(path.stem)}", path, licence, tuple(boxes), normalised=True
        )


def read_etoiles(root: Path) -> Iterator[SourceImage]:
    names = {"ebike": CLASS_ID["ebike"], "person": CLASS_ID["person"]}
    images = sorted((root / "images").glob("*.png"))
    groups = burst_groups(p.stem for p in images)
    for path in images:
        xml = root / "annotations" / f"{path.stem}.xml"
        boxes = []
        if xml.exists():
            for obj in ET.parse(xml).getroot().iter("object"):
                name = (obj.findtext("name") or "").strip().lower()
                bb = obj.find("bndbox")
                if name not in names or bb is None:
                    continue
                coords = [float(bb.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax")]
                boxes.append(Box(names[name], *coords))
        yield SourceImage(
            "etoiles-elevator-ebike", f"etoiles/{groups[path.stem]}", path, "GPL-3.0 repo; image rights unclear",
            tuple(boxes),
        )


def read_motorbike_scooter(root: Path) -> Iterator[SourceImage]:
    for split in ("train", "valid", "test"):
        yield from _yolo_folder(
            "roboflow-motorbike-scooter", "CC BY 4.0", root / split / "images", root / split / "labels",
            {0: CLASS_ID["ebike"]}, "motorbike",
        )


def read_bicycle(root: Path) -> Iterator[SourceImage]:
    for split in ("train", "valid", "test"):
        yield from _yolo_folder(
            "roboflow-bicycle", "CC BY 4.0", root / split / "images", root / split / "labels",
            {0: CLASS_ID["bicycle"]}, "bicycle",
        )


def read_lexra(root: Path) -> Iterator[SourceImage]:
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        yield from _yolo_folder(
            "lexra-wheelchair", "none stated", sub, sub,
            {0: CLASS_ID["person"], 1: CLASS_ID["wheelchair"]}, f"lexra/{sub.name}",
        )


def read_coco128(root: Path) -> Iterator[SourceImage]:
    yield from _yolo_folder(
        "coco128", "annotations CC BY 4.0; images Flickr terms",
        root / "images" / "train2017", root / "labels" / "train2017",
        {0: CLASS_ID["person"], 1: CLASS_ID["bicycle"], 3: CLASS_ID["ebike"]}, "coco128",
    )


def read_huican_stroller(root: Path) -> Iterator[SourceImage]:
    """Strollers and prams (train/val). Its 62 images without a box are hard negatives, kept as such."""
    for split in ("train", "val"):
        yield from _yolo_folder(
            "huican-stroller", "none stated", root / split / "images", root / split / "labels",
            {0: CLASS_ID["stroller"]}, f"stroller/{split}",
        )


def read_wheelchair_seg(root: Path) -> Iterator[SourceImage]:
    for split in ("train", "valid", "test"):
        ann_path = root / split / "_annotations.coco.json"
        if not ann_path.exists():
            continue
        coco = json.loads(ann_path.read_text())
        by_image: dict[int, list[dict[str, object]]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        for img in sorted(coco["images"], key=lambda i: str(i["file_name"])):
            path = root / split / str(img["file_name"])
            boxes, polys = [], []
            for ann in by_image.get(int(img["id"]), []):
                for seg in ann.get("segmentation") or []:  # type: ignore[attr-defined]
                    pts = np.asarray(seg, dtype=np.float32).reshape(-1, 2)
                    if len(pts) < 3:
                        continue
                    polys.append((CLASS_ID["wheelchair"], pts))
                    x1, y1 = pts.min(axis=0)
                    x2, y2 = pts.max(axis=0)
                    boxes.append(Box(CLASS_ID["wheelchair"], float(x1), float(y1), float(x2), float(y2)))
            yield SourceImage(
                "roboflow-wheelchair-seg", f"wheelchair-seg/{stem_group(path.stem)}", path, "CC BY 4.0",
                tuple(boxes), tuple(polys),
            )


READERS: dict[str, Callable[[Path], Iterator[SourceImage]]] = {
    "etoiles-elevator-ebike": read_etoiles,
    "roboflow-motorbike-scooter": read_motorbike_scooter,
    "lexra-wheelchair": read_lexra,
    "roboflow-wheelchair-seg": read_wheelchair_seg,
    "roboflow-bicycle": read_bicycle,
    "coco128": read_coco128,
    "huican-stroller": read_huican_stroller,
}


def iter_sources(src: Path, only: set[str] | None = None) -> Iterator[SourceImage]:
    """All known sources present under ``src``, in a fixed order."""
    for folder, reader in READERS.items():
        if only is not None and folder not in only:
            continue
        if (src / folder).is_dir():
            yield from reader(src / folder)
