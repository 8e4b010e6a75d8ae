"""Views of real photos (and composites) run once through the frozen ImageNet backbone, cached on disk.

A *view* is one 320×256 model input made from one image: the plain letterbox (what a held-out image is
scored on) or a random view augmentation (training only): rotation up to ±90°, a strong perspective
warp, flips, greyscale "IR", blur, brightness, low resolution and JPEG blocking. Every view records
the source folder and group of its image and, for a composite, every source whose pixels it carries
(``uses``), so that a fold can leave out everything a held-out source touched.

The store is a folder: ``views.json`` (one record per view) and ``p5.npy`` (float16 [N, 320, 8, 10],
the stride-32 output of the ImageNet EfficientNet-Lite0 stages 1–7), written in order, resumable.

    python -m tools.views --src ../shared/datasets --out /work/runs/views --aug 1 --ebike-aug 4
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from contract.model_format import PAD_VALUE
from tools.augment import letterbox, normalise
from tools.corpus import CLASS_ID
from tools.model import INPUT_H, INPUT_W
from tools.sources import SourceImage, iter_sources

log = logging.getLogger("tools.views")
P5_SHAPE = (320, INPUT_H // 32, INPUT_W // 32)
EBIKE = CLASS_ID["ebike"]


@dataclass
class View:
    source: str
    group: str
    image: str  # path of the image (or a composite's id)
    kind: str  # "plain" | "aug" | "composite"
    boxes: list[list[float]]  # [cls, x1, y1, x2, y2] in view pixels
    uses: list[str] = field(default_factory=list)  # sources whose pixels are in the view (itself included)

    @property
    def has_ebike(self) -> bool:
        return any(int(b[0]) == EBIKE for b in self.boxes)


def _boxes_array(item: SourceImage, w: int, h: int) -> np.ndarray:
    rows = [[b.cls, b.x1, b.y1, b.x2, b.y2] for b in item.pixel_boxes(w, h)]
    return np.asarray(rows, np.float32).reshape(-1, 5)


def view_augment(rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One strong view augmentation into the model canvas; boxes follow as their corners' bounding box."""
    h, w = rgb.shape[:2]
    if rng.random() < 0.5:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
        boxes = boxes.copy()
        boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    # Perspective: each corner moves by up to 22 % of the side (a camera looking down at an angle).
    jitter = rng.uniform(-0.22, 0.22, (4, 2)) * np.array([w, h], np.float32) if rng.random() < 0.7 else np.zeros((4, 2))
    dst = (src + jitter).astype(np.float32)
    angle = float(rng.uniform(-90, 90)) if rng.random() < 0.7 else 0.0
    c = dst.mean(axis=0)
    rot = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), angle, 1.0)
    dst = (np.hstack([dst, np.ones((4, 1), np.float32)]) @ rot.T).astype(np.float32)
    # Fit the warped quad into the canvas at a random scale and place.
    x0, y0 = dst.min(axis=0)
    x1, y1 = dst.max(axis=0)
    fit = min(INPUT_W / (x1 - x0), INPUT_H / (y1 - y0)) * float(np.exp(rng.uniform(np.log(0.55), np.log(1.3))))
    dst = (dst - [x0, y0]) * fit
    qw, qh = (x1 - x0) * fit, (y1 - y0) * fit
    dst += [rng.uniform(min(0, INPUT_W - qw), max(0, INPUT_W - qw)), rng.uniform(min(0, INPUT_H - qh),
                                                                                 max(0, INPUT_H - qh))]
    m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    out = cv2.warpPerspective(rgb, m, (INPUT_W, INPUT_H), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    kept = []
    for b in boxes:
        pts = np.array([[b[1], b[2]], [b[3], b[2]], [b[3], b[4]], [b[1], b[4]]], np.float32).reshape(-1, 1, 2)
        q = cv2.perspectiveTransform(pts, m).reshape(-1, 2)
        area = (q[:, 0].max() - q[:, 0].min()) * (q[:, 1].max() - q[:, 1].min())
        qx1, qy1 = max(0.0, float(q[:, 0].min())), max(0.0, float(q[:, 1].min()))
        qx2, qy2 = min(float(INPUT_W), float(q[:, 0].max())), min(float(INPUT_H), float(q[:, 1].max()))
        if qx2 - qx1 < 4 or qy2 - qy1 < 4 or (qx2 - qx1) * (qy2 - qy1) < 0.35 * area:
            continue
        # The corners' box of a rotated object is loose: shrink it towards the centre a little.
        s = 0.12 * abs(np.sin(np.deg2rad(2 * angle)))
        dx, dy = s * (qx2 - qx1) / 2, s * (qy2 - qy1) / 2
        kept.append([b[0], qx1 + dx, qy1 + dy, qx2 - dx, qy2 - dy])
    return cctv_degrade(out, rng), np.asarray(kept, np.float32).reshape(-1, 5)


def cctv_degrade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour/brightness jitter, greyscale, blur, low resolution, JPEG blocking (each at random)."""
    x = rgb.astype(np.float32)
    x = (x - 128) * rng.uniform(0.6, 1.3) + 128 + rng.uniform(-40, 25)
    out: np.ndarray = x.clip(0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        g = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = np.asarray(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB))
    if rng.random() < 0.25:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.8)))
    if rng.random() < 0.25:
        f = rng.uniform(0.3, 0.6)
        small = cv2.resize(out, (int(INPUT_W * f), int(INPUT_H * f)), interpolation=cv2.INTER_AREA)
        out = np.asarray(cv2.resize(small, (INPUT_W, INPUT_H), interpolation=cv2.INTER_LINEAR))
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 50))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if decoded is not None:
            out = np.asarray(decoded)
    return out


def plan_views(items: Sequence[SourceImage], aug: float, ebike_aug: int, seed: int) -> list[tuple[int, str, int]]:
    """(item index, kind, seed) per view: a plain view of every image, `aug` augmented views per image on
    average (fractions sampled), `ebike_aug` for an image with an e-bike box."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[int, str, int]] = []
    for i, item in enumerate(items):
        plan.append((i, "plain", 0))
        has_ebike = any(b.cls == EBIKE for b in item.boxes)
        n = ebike_aug if has_ebike else int(aug) + int(rng.random() < aug - int(aug))
        plan.extend((i, "aug", int(rng.integers(2**31))) for _ in range(n))
    return plan


def render_view(item: SourceImage, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    bgr = item.load()
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes = _boxes_array(item, rgb.shape[1], rgb.shape[0])
    if kind == "plain":
        return letterbox(rgb, boxes)
    return view_augment(rgb, boxes, np.random.default_rng(seed))


def cap_per_source(items: Sequence[SourceImage], cap: int, seed: int) -> list[SourceImage]:
    """At most `cap` images per source (seeded sample, order kept); e-bike sources are never cut."""
    rng = np.random.default_rng(seed)
    keep: list[SourceImage] = []
    for source in dict.fromkeys(i.source for i in items):
        mine = [i for i in items if i.source == source]
        if len(mine) > cap and not any(b.cls == EBIKE for i in mine for b in i.boxes):
            pick = set(rng.choice(len(mine), cap, replace=False).tolist())
            mine = [m for k, m in enumerate(mine) if k in pick]
        keep.extend(mine)
    return keep


class Store:
    """Append-only view store: views.json + p5.npy (float16), sized up front."""

    def __init__(self, root: Path, capacity: int | None = None) -> None:
        self.root = root
        self.meta = root / "views.json"
        self.views: list[View] = []
        if self.meta.exists():
            self.views = [View(**v) for v in json.loads(self.meta.read_text())["views"]]
        path = root / "p5.npy"
        if capacity is not None and not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(path, "w+", np.float16, (capacity, *P5_SHAPE)).flush()
        self.p5 = np.load(path, mmap_mode="r+" if capacity is not None else "r")

    def append(self, views: Sequence[View], p5: np.ndarray) -> None:
        n = len(self.views)
        if n + len(views) > len(self.p5):
            raise ValueError(f"store {self.root} holds {len(self.p5)} views; {n + len(views)} asked")
        self.p5[n:n + len(views)] = p5.astype(np.float16)
        self.p5.flush()
        self.views.extend(views)
        self.meta.write_text(json.dumps({"views": [asdict(v) for v in self.views]}))


def backbone() -> object:
    import torch

    from tools.model import EfficientNetLite0

    torch.set_num_threads(2)
    net = EfficientNetLite0()
    net.load_pretrained()
    return net.eval()


def extract(store: Store, jobs: Iterable[tuple[View, np.ndarray]], total: int, batch: int = 32,
            progress: Path | None = None) -> None:
    """Run the ImageNet stages 1–7 over rendered views and append them (resumes after `len(store.views)`)."""
    import torch

    net = backbone()
    pending_v: list[View] = []
    pending_x: list[np.ndarray] = []
    t0, done0 = time.monotonic(), len(store.views)

    def flush() -> None:
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(pending_x))
            p5 = net.p4_to_p5(net.stem_to_p4(x)).numpy()  # type: ignore[attr-defined]
        store.append(pending_v, p5)
        pending_v.clear()
        pending_x.clear()
        done = len(store.views)
        rate = (done - done0) / max(time.monotonic() - t0, 1e-6)
        msg = f"{done}/{total} views, {rate:.1f}/s, eta {(total - done) / max(rate, 1e-6) / 60:.1f} min"
        if progress:
            progress.write_text(msg + "\n")
        log.info(msg)

    for view, rgb in jobs:
        pending_v.append(view)
        pending_x.append(normalise(rgb))
        if len(pending_v) == batch:
            flush()
    if pending_v:
        flush()


def real_jobs(items: Sequence[SourceImage], plan: Sequence[tuple[int, str, int]], start: int,
              ) -> Iterator[tuple[View, np.ndarray]]:
    for i, kind, seed in plan[start:]:
        item = items[i]
        rgb, boxes = render_view(item, kind, seed)
        yield View(item.source, item.group, str(item.path), kind, [[float(v) for v in b] for b in boxes],
                   [item.source]), rgb


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="the shared datasets folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--aug", type=float, default=1.0, help="augmented views per image (mean)")
    ap.add_argument("--ebike-aug", type=int, default=4, help="augmented views per image with an e-bike")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="only these source folders")
    ap.add_argument("--max-per-source", type=int, default=0, help="a seeded sample of at most this many images")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    items = list(iter_sources(args.src, set(args.only) if args.only else None))
    if args.max_per_source:
        items = cap_per_source(items, args.max_per_source, args.seed)
    plan = plan_views(items, args.aug, args.ebike_aug, args.seed)
    store = Store(args.out, capacity=len(plan))
    log.info("%d images, %d views planned, %d already stored", len(items), len(plan), len(store.views))
    extract(store, real_jobs(items, plan, len(store.views)), len(plan), progress=args.out / "progress.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
