"""Corpus reading, CenterNet targets and the backbone feature cache (stride-16 and stride-32 outputs).

On 2 CPU cores the backbone runs at ~13 images/s at 320×256, so it runs once per augmented copy and
its stride-16/32 outputs are kept (float16); the head then trains for many epochs in minutes, and
`tools.train --tune-tail` fine-tunes the stride-32 stages from the cached stride-16 output.
"""

from __future__ import annotations

import csv
import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from tools.augment import augment, letterbox, normalise
from tools.labels import IMAGE_SUFFIXES, read_yolo_labels
from tools.model import CLASSES, INPUT_H, INPUT_W, P4_LAST_BLOCK, STRIDE, EfficientNetLite0

GRID_W, GRID_H = INPUT_W // STRIDE, INPUT_H // STRIDE


@dataclass(frozen=True)
class Sample:
    image: Path
    boxes: np.ndarray  # [N, 5] class, x1, y1, x2, y2 normalised to [0, 1]
    source: str
    group: str

    @property
    def has_ebike(self) -> bool:
        return bool((self.boxes[:, 0] == CLASSES.index("ebike")).any())

    def pixel_boxes(self, width: int, height: int) -> np.ndarray:
        out = self.boxes.copy()
        out[:, [1, 3]] *= width
        out[:, [2, 4]] *= height
        return out


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_split(root: Path, split: str) -> list[Sample]:
    """Samples of one split; source/group come from manifest.csv when present."""
    meta: dict[str, tuple[str, str]] = {}
    manifest = root / "manifest.csv"
    if manifest.exists():
        with manifest.open(newline="") as f:
            for r in csv.DictReader(f):
                meta[r["file"]] = (r.get("source", "") or "", r.get("source_group", "") or "")
    samples = []
    for img in sorted((root / "images" / split).glob("*")):
        if img.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        # Normalised boxes: pixel sizes are only known once the image is decoded (scaled then).
        boxes = read_yolo_labels(root / "labels" / split / f"{img.stem}.txt", 1, 1)
        source, group = meta.get(img.name, ("unknown", img.stem))
        samples.append(Sample(img, boxes, source, group or img.stem))
    return samples


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius so a box shifted within it still overlaps the truth by `min_overlap`."""
    a1, b1, c1 = 1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def build_targets(boxes: np.ndarray, num_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap [C,H,W] and regression [5,H,W] (off_x, off_y, log_w, log_h, mask) on the stride-16 grid."""
    heat = np.zeros((num_classes, GRID_H, GRID_W), np.float32)
    reg = np.zeros((5, GRID_H, GRID_W), np.float32)
    ys, xs = np.mgrid[0:GRID_H, 0:GRID_W]
    # Large boxes first so that a small object sharing a cell keeps its own size target.
    areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    order: list[int] = np.argsort(-areas).tolist()
    for i in order:
        c, x1, y1, x2, y2 = boxes[i]
        w, h = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), GRID_W - 1), min(int(cy), GRID_H - 1)
        sigma = (2 * max(0.0, gaussian_radius(h, w)) + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[int(c)] = np.maximum(heat[int(c)], g)
        reg[:, iy, ix] = (cx - ix, cy - iy, math.log(max(w, 1e-2)), math.log(max(h, 1e-2)), 1.0)
    return heat, reg


@dataclass
class FeatureCache:
    p4: torch.Tensor  # [N,112,16,20] float16
    p5: torch.Tensor  # [N,320,8,10] float16
    heat: torch.Tensor  # [N,C,16,20] float16
    reg: torch.Tensor  # [N,5,16,20] float32
    sample_index: torch.Tensor  # [N] index into the sample list the cache was built from
    boxes: list[np.ndarray]  # per cached view, in input pixels (for AP on validation)

    def subset(self, keep: torch.Tensor) -> FeatureCache:
        idx = keep.nonzero().flatten()
        return FeatureCache(self.p4[idx], self.p5[idx], self.heat[idx], self.reg[idx],
                            self.sample_index[idx], [self.boxes[i] for i in idx.tolist()])

    def __len__(self) -> int:
        return int(self.p4.shape[0])


SYNTHETIC_PREFIX = "scenegen"


def copies_for(sample: Sample, base: int, ebike_extra: int, synthetic: int | None = None) -> int:
    # Generated scenes are each a fresh random render, so they need fewer augmented views than photos.
    if synthetic is not None and sample.source.startswith(SYNTHETIC_PREFIX):
        return synthetic
    # Real e-bikes are the scarce, safety-critical class: more augmented views of each.
    return base + (ebike_extra if sample.has_ebike else 0)


def view_key(sample: Sample, view: int, seed: int) -> str:
    """Identity of one cached view: image name and size, its labels, view number and seed.

    Corpora built by merging share file names, so views cached for one corpus are reused by the next.
    """
    h = hashlib.sha1(sample.image.name.encode())
    h.update(str(sample.image.stat().st_size).encode())
    h.update(np.ascontiguousarray(sample.boxes, np.float32).tobytes())
    h.update(f"{view}:{seed}".encode())
    return h.hexdigest()[:24]


STORE_MARK = "BACKBONE"


def backbone_fingerprint(backbone: EfficientNetLite0) -> str:
    """Identity of the frozen part (stem to stride 16, what `stem_to_p4` runs) whose output a store holds."""
    h = hashlib.sha1()
    for k, part in enumerate([backbone._conv_stem, backbone._bn0, *backbone._blocks[: P4_LAST_BLOCK + 1]]):
        for name, tensor in part.state_dict().items():
            h.update(f"{k}.{name}".encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def claim_store(store: Path, backbone: EfficientNetLite0) -> None:
    """Tie a feature store to one backbone: features of another backbone must never be mixed in.

    A store is claimed by the first backbone that writes to it (its `BACKBONE` file); a run with other
    weights (e.g. `tools.train --init` from a GPU-trained detector) is refused with the reason.
    """
    store.mkdir(parents=True, exist_ok=True)
    mark, mine = store / STORE_MARK, backbone_fingerprint(backbone)
    if not mark.exists():
        mark.write_text(mine + "\n")
        return
    theirs = mark.read_text().strip()
    if theirs != mine:
        raise ValueError(f"feature store {store} holds features of backbone {theirs}, but this run's backbone is "
                         f"{mine}: use another --feature-store folder for these weights")


def _view_rng(sample: Sample, view: int, seed: int) -> np.random.Generator:
    # Per-view generator: a view's augmentation does not depend on which other images are in the corpus.
    return np.random.default_rng([seed, zlib.crc32(sample.image.name.encode()), view])


@torch.no_grad()
def build_cache(
    backbone: EfficientNetLite0, samples: Sequence[Sample], copies: int, ebike_extra: int,
    seed: int, augmented: bool, batch: int = 16, desc: str = "features", store: Path | None = None,
    synthetic_copies: int | None = None,
) -> FeatureCache:
    """Run the backbone (ImageNet unless `tools.train --init`) over `copies` views per sample.

    View 0 is the plain letterbox.

    With `store`, each view's features are kept as one file there and reused on later runs.
    """
    backbone.eval()
    plan = [(i, v) for i, s in enumerate(samples)
            for v in range(copies_for(s, copies, ebike_extra, synthetic_copies) if augmented else 1)]
    p4s: list[torch.Tensor | None] = [None] * len(plan)
    p5s: list[torch.Tensor | None] = [None] * len(plan)
    boxes_out: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(plan)
    pending: list[tuple[int, np.ndarray, str]] = []
    last_rgb: tuple[int, np.ndarray] | None = None
    if store is not None:
        claim_store(store, backbone)

    def flush() -> None:
        p4, p5 = backbone.features(torch.from_numpy(np.stack([x for _, x, _ in pending])))
        for k, (slot, _, key) in enumerate(pending):
            p4s[slot], p5s[slot] = p4[k].half().clone(), p5[k].half().clone()
            if store is not None:
                torch.save((p4s[slot], p5s[slot], boxes_out[slot]), store / f"{key}.pt")
        pending.clear()

    for slot, (i, view) in enumerate(tqdm(plan, desc=desc, unit="view", dynamic_ncols=True)):
        key = view_key(samples[i], view, seed)
        if store is not None and (store / f"{key}.pt").exists():
            p4s[slot], p5s[slot], boxes_out[slot] = torch.load(store / f"{key}.pt", weights_only=False)
            continue
        if last_rgb is None or last_rgb[0] != i:
            last_rgb = (i, read_rgb(samples[i].image))
        rgb = last_rgb[1]
        src_boxes = samples[i].pixel_boxes(rgb.shape[1], rgb.shape[0])
        if view > 0:
            img, boxes_out[slot] = augment(rgb, src_boxes, _view_rng(samples[i], view, seed))
        else:
            img, boxes_out[slot] = letterbox(rgb, src_boxes)
        pending.append((slot, normalise(img), key))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    targets = [build_targets(b) for b in boxes_out]
    return FeatureCache(
        torch.stack([t for t in p4s if t is not None]), torch.stack([t for t in p5s if t is not None]),
        torch.stack([torch.from_numpy(h).half() for h, _ in targets]),
        torch.stack([torch.from_numpy(r) for _, r in targets]),
        torch.tensor([i for i, _ in plan]), boxes_out,
    )
