"""A data engine of real pixels: real objects cut out of real photos, composited into elevator cars.

Cut-outs: the wheelchair polygons of roboflow-wheelchair-seg; e-bikes/motorbikes (etoiles, roboflow
motorbike-scooter), bicycles, strollers (huican) and people (lexra person photos, coco128) from their
boxes with GrabCut (`tools.scenegen.cutouts`). Each cut-out remembers its source folder.

Backgrounds: the etoiles elevator stills with their own labelled objects inpainted away, and empty
procedural cars (`tools.scenegen.room`) seen from a ceiling corner or straight down. Objects stand on
the floor plane: position by the floor homography (procedural cars: the scene camera; stills: a
trapezoid over the lower frame), size by depth; seen from above they are rotated and foreshortened.
A person often stands beside or over the vehicle, in front of it, occluding it. Then the CCTV
artefacts: barrel (fisheye) distortion, burned-in timestamps and captions (Latin and CJK-like strokes:
no CJK font is installed here), letterbox bars, IR greyscale, low light, motion blur, low resolution,
JPEG blocking. Boxes come from the visible pixels of each object (occlusion and distortion included).

Composites are training data only. Each records the sources of all its pixels (`uses`), so that a
leave-one-source-out fold drops every composite made with the held-out source's cut-outs or stills.

    python -m tools.composite --src ../shared/datasets --out /work/runs/composites --n 2000
    python -m tools.composite --src ../shared/datasets --sheet docs/img/composites_sheet.png --n 16
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from tools.corpus import CLASS_ID, Box, CorpusWriter
from tools.features import SYNTHETIC_PREFIX
from tools.model import INPUT_H, INPUT_W
from tools.scenegen import effects
from tools.scenegen.camera import fisheye
from tools.scenegen.cutouts import _box_cutouts, _polygon_cutouts
from tools.scenegen.sprite import Sprite
from tools.sources import iter_sources
from tools.views import View

log = logging.getLogger("tools.composite")
OUT_W, OUT_H = 480, 384  # rendered a little larger than the model input, then degraded and resized
ETOILES = "etoiles-elevator-ebike"
# Generated data by the trainer's prefix: one view each, never a held-out source or an operating point.
COMPOSITE_SOURCE = f"{SYNTHETIC_PREFIX}-composite"
# (source, classes cut out, max images read)
PLAN: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("roboflow-wheelchair-seg", ("wheelchair",), 300),
    (ETOILES, ("ebike",), 28),
    ("roboflow-motorbike-scooter", ("ebike",), 351),
    ("roboflow-bicycle", ("bicycle",), 250),
    ("huican-stroller", ("stroller",), 300),
    ("lexra-wheelchair", ("person",), 200),
    ("coco128", ("person",), 128),
)
# Longest side in metres of each class as pasted.
SIZE_M = {CLASS_ID["ebike"]: (1.5, 1.9), CLASS_ID["bicycle"]: (1.4, 1.8), CLASS_ID["wheelchair"]: (0.8, 1.1),
          CLASS_ID["stroller"]: (0.8, 1.1), CLASS_ID["person"]: (1.55, 1.85)}
MAIN = [(CLASS_ID["ebike"], 0.4), (CLASS_ID["bicycle"], 0.15), (CLASS_ID["wheelchair"], 0.15),
        (CLASS_ID["stroller"], 0.15), (-1, 0.15)]


@dataclass
class Cutout:
    source: str
    sprite: Sprite


def load_cutouts(src: Path, scale: float = 1.0, grabcut: bool = True,
                 exclude: frozenset[str] = frozenset()) -> dict[int, list[Cutout]]:
    bank: dict[int, list[Cutout]] = {}
    for folder, names, limit in PLAN:
        if folder in exclude:
            continue
        items = list(iter_sources(src, {folder}))
        if folder == "lexra-wheelchair":
            items = [i for i in items if i.path.parent.name == "person"]
        classes = {CLASS_ID[n] for n in names}
        step = max(1, len(items) // max(1, int(limit * scale)))
        for item in items[::step]:
            image = item.load()
            sprites = _polygon_cutouts(item, image) if item.polygons else _box_cutouts(item, image, classes, grabcut)
            for s in sprites:
                if s.cls in classes:
                    bank.setdefault(s.cls, []).append(Cutout(folder, s))
    log.info("cut-outs: %s", {k: len(v) for k, v in bank.items()})
    return bank


def inpainted_stills(src: Path, exclude: frozenset[str] = frozenset()) -> list[np.ndarray]:
    """The etoiles stills with their labelled e-bikes and people inpainted away, at the render size."""
    out: list[np.ndarray] = []
    if ETOILES in exclude:
        return out
    for item in iter_sources(src, {ETOILES}):
        img = item.load()
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for b in item.pixel_boxes(w, h):
            cv2.rectangle(mask, (int(b.x1) - 4, int(b.y1) - 4), (int(b.x2) + 4, int(b.y2) + 4), 255, -1)
        f = OUT_W / w
        small = cv2.resize(img, (OUT_W, round(h * f)), interpolation=cv2.INTER_AREA)
        m = cv2.resize(mask, (OUT_W, round(h * f)), interpolation=cv2.INTER_NEAREST)
        out.append(cv2.inpaint(small, m, 5, cv2.INPAINT_TELEA))
    return out


@dataclass
class Floor:
    """Floor position (u, v ∈ [0, 1], v = 1 nearest the camera) → pixel point and pixels per metre."""

    top_down: bool
    quad: np.ndarray  # image corners of the floor: far-left, far-right, near-right, near-left
    ppm_far: float
    ppm_near: float

    def at(self, u: float, v: float) -> tuple[float, float, float]:
        fl, fr, nr, nl = self.quad
        far, near = fl + (fr - fl) * u, nl + (nr - nl) * u
        p = far + (near - far) * v
        return float(p[0]), float(p[1]), self.ppm_far + (self.ppm_near - self.ppm_far) * v


def procedural_car(rng: np.random.Generator) -> tuple[np.ndarray, Floor]:
    from tools.scenegen.camera import Camera
    from tools.scenegen.room import make_car, render_car

    car = make_car(rng)
    w, d, h = car.width, car.depth, car.height
    if rng.random() < 0.4:
        pos = np.array([w / 2 + rng.uniform(-0.15, 0.15), d / 2 + rng.uniform(-0.2, 0.2), h - 0.05])
        cam = Camera.look_at(pos, pos * np.array([1, 1, 0]) + 0.01, rng.uniform(85, 110), OUT_W, OUT_H,
                             rng.uniform(-180, 180))
        img = render_car(car, cam, ("door", "back", "left", "right"), float(pos[2]) - 0.3)
        top = True
    else:
        right = rng.random() < 0.5
        pos = np.array([w - 0.06 if right else 0.06, d - 0.06, h - rng.uniform(0.05, 0.2)])
        target = np.array([w * rng.uniform(0.3, 0.7), d * rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.6)])
        cam = Camera.look_at(pos, target, rng.uniform(80, 100), OUT_W, OUT_H, rng.uniform(-4, 4))
        img = render_car(car, cam, ("door", "left", "right"))
        top = False
    m = 0.25
    corners = np.array([[m, d - m, 0], [w - m, d - m, 0], [w - m, m, 0], [m, m, 0]], float)
    if not top:  # from the back corner the door side is "far"
        corners = np.array([[m, m, 0], [w - m, m, 0], [w - m, d - m, 0], [m, d - m, 0]], float)
    uv, depth = cam.project(corners)
    ppm = cam.focal / depth
    return img, Floor(top, uv, float(ppm[:2].mean()), float(ppm[2:].mean()))


def still_floor(img: np.ndarray, rng: np.random.Generator) -> Floor:
    h, w = img.shape[:2]
    y_far, y_near = h * rng.uniform(0.35, 0.55), h * rng.uniform(0.85, 1.0)
    quad = np.array([[w * 0.3, y_far], [w * 0.7, y_far], [w * 0.95, y_near], [w * 0.05, y_near]], float)
    ppm_near = w / rng.uniform(1.8, 2.6)
    return Floor(False, quad, ppm_near * rng.uniform(0.45, 0.65), ppm_near)


def _prepare(sprite: Sprite, floor: Floor, ppm: float, rng: np.random.Generator) -> np.ndarray:
    size = rng.uniform(*SIZE_M[sprite.cls]) * ppm
    bgra = sprite.bgra
    if rng.random() < 0.5:
        bgra = np.ascontiguousarray(bgra[:, ::-1])
    h, w = bgra.shape[:2]
    f = size / max(h, w)
    squash = rng.uniform(0.45, 0.8) if floor.top_down else rng.uniform(0.7, 1.0)  # seen from above
    bgra = cv2.resize(bgra, (max(2, round(w * f)), max(2, round(h * f * squash))), interpolation=cv2.INTER_AREA)
    angle = rng.uniform(-180, 180) if floor.top_down else rng.uniform(-25, 25)
    return Sprite(bgra, sprite.cls).rotated(angle).bgra


def _paste(img: np.ndarray, ids: np.ndarray, bgra: np.ndarray, cx: float, cy: float, idx: int) -> None:
    h, w = bgra.shape[:2]
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(img.shape[1], x0 + w), min(img.shape[0], y0 + h)
    if xb <= xa or yb <= ya:
        return
    s = bgra[ya - y0:yb - y0, xa - x0:xb - x0]
    a = s[:, :, 3:4].astype(np.float32) / 255
    roi = img[ya:yb, xa:xb]
    roi[:] = (roi * (1 - a) + s[:, :, :3] * a).astype(np.uint8)
    ids[ya:yb, xa:xb][a[:, :, 0] > 0.5] = idx


def _cjk_caption(img: np.ndarray, rng: np.random.Generator, x: int, y: int, size: int, color: tuple[int, ...]) -> None:
    """A caption of CJK-like glyphs: each a square cell of random strokes (no CJK font here)."""
    for k in range(int(rng.integers(4, 9))):
        gx = x + k * (size + 2)
        for _ in range(int(rng.integers(3, 7))):
            p = rng.integers(0, size, 4)
            if rng.random() < 0.5:
                p[3] = p[1]
            else:
                p[2] = p[0]
            cv2.line(img, (gx + int(p[0]), y + int(p[1])), (gx + int(p[2]), y + int(p[3])), color, 1, cv2.LINE_AA)


def cctv(img: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.4:
        img, ids = fisheye(img, ids, float(rng.uniform(0.4, 1.2)))
    img = effects.infrared(rng, img) if rng.random() < 0.25 else effects.lighting(rng, img)
    if rng.random() < 0.3:
        img = effects.motion_blur(rng, img)
    img = effects.sensor_noise(rng, img, float(rng.uniform(0, 6)))
    if rng.random() < 0.8:
        effects.timestamp_overlay(rng, img)
    if rng.random() < 0.6:
        color = (255, 255, 255) if rng.random() < 0.7 else (0, 220, 255)
        size = int(rng.integers(10, 16))
        y = int(rng.integers(4, 30)) if rng.random() < 0.5 else img.shape[0] - size - int(rng.integers(4, 20))
        _cjk_caption(img, rng, int(rng.integers(4, img.shape[1] // 2)), y, size, color)
    if rng.random() < 0.3:  # letterboxed to 16:9 with black bars
        bar = int(img.shape[0] * rng.uniform(0.08, 0.16))
        img[:bar] = 0
        img[-bar:] = 0
        ids[:bar] = 0
        ids[-bar:] = 0
    if rng.random() < 0.3:
        f = rng.uniform(0.35, 0.6)
        small = cv2.resize(img, (int(img.shape[1] * f), int(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    img = effects.jpeg_roundtrip(img, int(rng.integers(20, 80)))
    return img, ids


def _pick(bank: dict[int, list[Cutout]], cls: int, rng: np.random.Generator) -> Cutout | None:
    options = bank.get(cls)
    return options[int(rng.integers(len(options)))] if options else None


def render(bank: dict[int, list[Cutout]], stills: Sequence[np.ndarray], rng: np.random.Generator,
           ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One composite: RGB at the model input size, boxes [N, 5] in its pixels, sources of its pixels."""
    uses: set[str] = set()
    if stills and rng.random() < 0.5:
        img = stills[int(rng.integers(len(stills)))].copy()
        floor = still_floor(img, rng)
        uses.add(ETOILES)
    else:
        img, floor = procedural_car(rng)
    ids = np.zeros(img.shape[:2], np.uint8)
    classes = [c for c, _ in MAIN]
    main = classes[int(rng.choice(len(MAIN), p=[p for _, p in MAIN]))]
    objs: list[tuple[int, float, float]] = []  # class, u, v
    if main >= 0:
        objs.append((main, rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.9)))
        if rng.random() < 0.65:  # the person pushing it: beside, in front, over it
            u, v = objs[0][1] + rng.uniform(-0.25, 0.25), objs[0][2] + rng.uniform(0.0, 0.25)
            objs.append((CLASS_ID["person"], float(np.clip(u, 0, 1)), float(np.clip(v, 0, 1))))
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        c = CLASS_ID["person"] if rng.random() < 0.7 else classes[int(rng.integers(4))]
        objs.append((c, rng.uniform(0, 1), rng.uniform(0, 1)))
    objs.sort(key=lambda o: o[2])  # far first: nearer objects occlude
    full: dict[int, int] = {}
    labels: dict[int, int] = {}
    for k, (cls, u, v) in enumerate(objs, start=1):
        cut = _pick(bank, cls, rng)
        if cut is None:
            continue
        x, y, ppm = floor.at(u, v)
        bgra = _prepare(cut.sprite, floor, ppm, rng)
        if not floor.top_down:
            y -= bgra.shape[0] * 0.45  # stands on the floor point
        _paste(img, ids, bgra, x, y, k)
        full[k] = int((bgra[:, :, 3] > 127).sum())
        labels[k] = cls
        uses.add(cut.source)
    img, ids = cctv(img, ids, rng)
    sx, sy = INPUT_W / img.shape[1], INPUT_H / img.shape[0]
    boxes = []
    for k, cls in labels.items():
        ys, xs = np.nonzero(ids == k)
        if len(xs) < 0.25 * full[k] or len(xs) < 30:
            continue
        boxes.append([cls, xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy])
    rgb = cv2.cvtColor(cv2.resize(img, (INPUT_W, INPUT_H), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return rgb, np.asarray(boxes, np.float32).reshape(-1, 5), sorted(uses)


def composite_jobs(bank: dict[int, list[Cutout]], stills: Sequence[np.ndarray], n: int, seed: int, start: int = 0,
                   ) -> Iterator[tuple[View, np.ndarray]]:
    for i in range(start, n):
        rgb, boxes, uses = render(bank, stills, np.random.default_rng([seed, i]))
        yield View("composite", f"composite/{seed}/{i}", f"composite:{seed}:{i}", "composite",
                   [[float(x) for x in b] for b in boxes], uses), rgb


def write_corpus(root: Path, jobs: Iterable[tuple[View, np.ndarray]], total: int) -> int:
    """Composites as a training-only YOLO corpus (tools.corpus layout) for `tools.train`.

    Their manifest source starts with the trainer's generated-data prefix, so the trainer gives each
    one view and never sets an operating point on them (they are training data, not a held-out source);
    the sources of their pixels go in the group column, e.g. `composite/0/12|huican-stroller|coco128`."""
    writer = CorpusWriter(root)
    n = 0
    for view, rgb in tqdm(jobs, total=total, desc="composites", unit="img"):
        boxes = [Box(int(b[0]), b[1], b[2], b[3], b[4]) for b in view.boxes]
        name = view.image.replace(":", "_")
        writer.add(name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), boxes, "train", COMPOSITE_SOURCE,
                   "|".join([view.group, *view.uses]), "derived from the shared datasets; never committed")
        n += 1
    writer.finish()
    return n


def contact_sheet(bank: dict[int, list[Cutout]], stills: Sequence[np.ndarray], out: Path, n: int, seed: int) -> None:
    tiles = []
    for view, rgb in composite_jobs(bank, stills, n, seed):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for b in view.boxes:
            color = (0, 0, 255) if int(b[0]) == 0 else (0, 200, 0)
            cv2.rectangle(bgr, (int(b[1]), int(b[2])), (int(b[3]), int(b[4])), color, 1)
        tiles.append(bgr)
    cols = 4
    rows = [np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows))


def main(argv: Sequence[str] | None = None) -> int:
    from tools.views import Store, extract

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="a tools.views store to fill with the composites' features")
    ap.add_argument("--sheet", type=Path, help="write a contact sheet (boxes drawn) instead")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-grabcut", action="store_true")
    ap.add_argument("--corpus", type=Path, help="write the composites as a YOLO corpus (train split) for tools.train")
    ap.add_argument("--exclude-source", action="append", default=[], choices=[f for f, _, _ in PLAN],
                    help="use no cut-out or still of this source (a leave-one-source-out fold's training data)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    exclude = frozenset(args.exclude_source)
    bank = load_cutouts(args.src, grabcut=not args.no_grabcut, scale=0.15 if args.sheet else 1.0, exclude=exclude)
    stills = inpainted_stills(args.src, exclude)
    if args.sheet:
        contact_sheet(bank, stills, args.sheet, args.n, args.seed)
        return 0
    if args.corpus is not None:
        n = write_corpus(args.corpus, composite_jobs(bank, stills, args.n, args.seed), args.n)
        log.info("%d composites written to %s (excluded: %s)", n, args.corpus, sorted(exclude) or "none")
        return 0
    if args.out is None:
        ap.error("give --out, --corpus or --sheet")
    store = Store(args.out, capacity=args.n)
    extract(store, composite_jobs(bank, stills, args.n, args.seed, len(store.views)), args.n,
            progress=args.out / "progress.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
