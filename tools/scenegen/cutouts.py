"""Real object cut-outs from the shared datasets, for copy-paste into generated scenes.

Only the training corpus may contain them: the sources may not be redistributed, so anything the
project commits (demo clips, the contact sheet) is rendered with ``CutoutBank.empty()``.
Cut-outs keep the train/val split of the image they came from (same rule as the dataset builder),
so a real object seen in a val scene was never seen in a train scene.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tools.corpus import CLASS_ID
from tools.dataset_builder import plan_splits
from tools.scenegen.sprite import Rng, Sprite
from tools.sources import SourceImage, iter_sources

log = logging.getLogger(__name__)
MAX_SIDE = 180  # cut-outs are pasted at 20-200 px, no need to keep more
MIN_SIDE = 48  # smaller source boxes are too blurry to paste


@dataclass
class CutoutBank:
    by_split: dict[str, dict[int, list[Sprite]]] = field(default_factory=lambda: {"train": {}, "val": {}})

    @staticmethod
    def empty() -> CutoutBank:
        return CutoutBank()

    def __bool__(self) -> bool:
        return any(self.by_split[s] for s in self.by_split)

    def count(self) -> dict[str, int]:
        return {
            f"{split}/{name}": len(self.by_split[split].get(cid, []))
            for split in self.by_split for name, cid in CLASS_ID.items() if self.by_split[split].get(cid)
        }

    def pick(self, rng: Rng, cls: int, split: str) -> Sprite | None:
        options = self.by_split[split].get(cls)
        if not options:
            return None
        return options[int(rng.integers(len(options)))]


def _soft_rect_alpha(h: int, w: int) -> np.ndarray:
    # A rectangular patch carries its background; an elliptical feathered alpha hides the seam.
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.52), int(h * 0.52)), 0, 0, 360, 255, -1)
    k = max(3, (min(h, w) // 8) | 1)
    return cv2.GaussianBlur(alpha, (k, k), 0)


def _fit(bgra: np.ndarray) -> np.ndarray:
    h, w = bgra.shape[:2]
    f = min(1.0, MAX_SIDE / max(h, w))
    return cv2.resize(bgra, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else bgra


def _grabcut_alpha(crop: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray | None:
    """Foreground alpha by GrabCut inside ``rect`` (x, y, w, h), or None when it looks unreliable."""
    mask = np.zeros(crop.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means init draws from OpenCV's RNG: keep the bank reproducible
    try:
        cv2.grabCut(crop, mask, rect, bgd, fgd, 2, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return None
    fg = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    share = np.count_nonzero(fg) / max(1, rect[2] * rect[3])
    # Too little: it lost the object; nearly all: it kept the background. Use the soft patch then.
    if not 0.2 < share < 0.9:
        return None
    return cv2.GaussianBlur(fg, (5, 5), 0)


def _box_cutouts(item: SourceImage, image: np.ndarray, classes: set[int], grabcut: bool) -> list[Sprite]:
    h, w = image.shape[:2]
    out = []
    for b in item.pixel_boxes(w, h):
        if b.cls not in classes or min(b.x2 - b.x1, b.y2 - b.y1) < MIN_SIDE:
            continue
        # A margin around the box gives GrabCut background to learn from.
        mx, my = 0.08 * (b.x2 - b.x1), 0.08 * (b.y2 - b.y1)
        x1, y1 = int(max(0, b.x1 - mx)), int(max(0, b.y1 - my))
        x2, y2 = int(min(w, b.x2 + mx)), int(min(h, b.y2 + my))
        crop = image[y1:y2, x1:x2]
        f = min(1.0, MAX_SIDE / max(crop.shape[:2]))
        if f < 1.0:
            crop = cv2.resize(crop, (max(1, int(crop.shape[1] * f)), max(1, int(crop.shape[0] * f))),
                              interpolation=cv2.INTER_AREA)
        rect = (int((b.x1 - x1) * f) + 1, int((b.y1 - y1) * f) + 1,
                max(2, int((b.x2 - b.x1) * f) - 2), max(2, int((b.y2 - b.y1) * f) - 2))
        alpha = _grabcut_alpha(crop, rect) if grabcut else None
        if alpha is None:
            rx, ry, rw, rh = rect
            crop = crop[ry:ry + rh, rx:rx + rw]
            alpha = _soft_rect_alpha(*crop.shape[:2])
        bgra = np.dstack([crop, alpha])
        out.append(Sprite(Sprite(bgra, b.cls).trimmed().bgra, b.cls, item.group))
    return out


def _polygon_cutouts(item: SourceImage, image: np.ndarray) -> list[Sprite]:
    out = []
    for cls, poly in item.polygons:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [poly.astype(np.int32)], 255, cv2.LINE_AA)
        x, y, w, h = cv2.boundingRect(mask)
        if min(w, h) < MIN_SIDE:
            continue
        alpha = cv2.GaussianBlur(mask[y:y + h, x:x + w], (3, 3), 0)
        out.append(Sprite(_fit(np.dstack([image[y:y + h, x:x + w], alpha])), cls, item.group))
    return out


# (source folder, classes taken as box cut-outs, max images read) — polygons preferred where they exist.
_PLAN: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("roboflow-wheelchair-seg", ("wheelchair",), 400),
    ("etoiles-elevator-ebike", ("ebike",), 100),
    ("roboflow-motorbike-scooter", ("ebike",), 350),
    ("roboflow-bicycle", ("bicycle",), 300),
    ("lexra-wheelchair", ("person",), 250),
    ("coco128", ("person",), 128),
)


def load_bank(src: Path, val_fraction: float, scale: float = 1.0, grabcut: bool = True) -> CutoutBank:
    """Read cut-outs from the shared sources under ``src`` (deterministic order).

    With ``grabcut`` box crops are segmented (about a minute for the full bank on one core);
    without, they are soft-edged rectangular patches (seconds).
    """
    bank = CutoutBank()
    for folder, class_names, limit in _PLAN:
        items = list(iter_sources(src, {folder}))
        if not items:
            continue
        if folder == "lexra-wheelchair":  # the person sub-folder: people without wheelchairs
            items = [i for i in items if i.path.parent.name == "person"]
        splits = plan_splits(items, val_fraction)
        classes = {CLASS_ID[n] for n in class_names}
        step = max(1, len(items) // max(1, int(limit * scale)))
        for item in items[::step]:
            image = item.load()
            sprites = (_polygon_cutouts(item, image) if item.polygons
                       else _box_cutouts(item, image, classes, grabcut))
            for s in sprites:
                bank.by_split[splits[item.group]].setdefault(s.cls, []).append(s)
    log.info("cut-out bank: %s", bank.count())
    return bank
