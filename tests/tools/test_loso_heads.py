"""Nonlinear LOSO heads: scoring every window equals classifying each window's own features; a fold never
trains on its held-out source; thresholds come from the other folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tools.loso as loso
import tools.loso_heads as lh
from tools.views import P5_SHAPE, Store, View


def _head(context: bool, d: int = 1280, hidden: int = 8, seed: int = 0) -> lh.MLPHead:
    rng = np.random.default_rng(seed)
    n = len(loso.R_CLASSES)
    return lh.MLPHead(rng.normal(0, 0.05, (d, hidden)).astype(np.float32),
                      rng.normal(0, 0.1, hidden).astype(np.float32),
                      rng.normal(0, 1, (hidden, n)).astype(np.float32), rng.normal(0, 1, n).astype(np.float32),
                      rng.normal(0, 0.05, (d, hidden)).astype(np.float32) if context else None)


def test_mlp_scores_of_every_window_equal_the_mlp_on_that_windows_pooled_features() -> None:
    rng = np.random.default_rng(1)
    f = rng.random((2, 1280, loso.GRID_H, loso.GRID_W)).astype(np.float32)
    win = loso.all_windows()
    for context in (False, True):
        head = _head(context)
        z = head.window_logits(f, win)
        for w in (0, 17, 500, len(win) - 1):
            x = lh.window_features(f, np.repeat(win[w:w + 1], 2, axis=0), context)
            np.testing.assert_allclose(z[:, w], head.logits(x), rtol=1e-3, atol=1e-3)


def test_context_is_the_window_grown_by_one_cell_clipped_to_the_map() -> None:
    w = np.array([[0, 0, 1, 1], [3, 4, 5, 6], [7, 9, 8, 10]])
    assert lh.grow(w).tolist() == [[0, 0, 2, 2], [2, 3, 6, 7], [6, 8, 8, 10]]


def test_object_windows_are_two_to_six_cells_a_side() -> None:
    win = loso.all_windows()[lh.object_windows()]
    sides = np.concatenate([win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]])
    assert sides.min() == 2 and sides.max() == 6 and len(win) == 25 * 35


def test_margin_score_is_low_when_a_veto_class_outscores_the_ebike() -> None:
    logits = np.array([[[3.0, 5.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0, 0]]])  # same e-bike logit, bicycle high / low
    s = lh.ebike_scores(logits)
    assert s["margin"][0, 0] < 0.2 < 0.9 < s["margin"][0, 1]
    assert s["p"][0, 0] < s["p"][0, 1]


def test_exact_threshold_keeps_the_budget_without_a_grid() -> None:
    neg = np.array([0.1] * 97 + [0.995, 0.997, 0.999])
    t = lh.exact_threshold(neg, 0.02)
    assert 0.995 < t <= 0.997 and np.mean(neg >= t) <= 0.02
    assert lh.exact_threshold(np.zeros(0), 0.01) == 0.0


SOURCES = ["etoiles-elevator-ebike", "roboflow-motorbike-scooter", "lexra-wheelchair", "roboflow-bicycle"]


def test_no_fold_trains_on_its_held_out_source_nor_on_composites_made_from_it(tmp_path: Path) -> None:
    # Each source's views carry that source's own constant map; a composite made from a source carries its map.
    rng = np.random.default_rng(0)
    sig = {s: rng.normal(0, 2, 320).astype(np.float32) for s in SOURCES}
    views = []
    for s in SOURCES:
        box = [[0, 40.0, 40.0, 200.0, 180.0]] if s in SOURCES[:2] else [[2, 60.0, 30.0, 220.0, 200.0]]
        views += [View(s, f"{s}/{i}", f"/{s}/{i}.jpg", kind, box, [s]) for i in range(3) for kind in ("plain", "aug")]
    comps = [View("composite", f"c/{s}", f"c:{s}", "composite", [[0, 40.0, 40.0, 200.0, 180.0]], [s]) for s in SOURCES]
    stores = []
    for name, vs, key in (("real", views, "source"), ("comp", comps, "uses")):
        st = Store(tmp_path / name, capacity=len(vs))
        st.append(vs, np.stack([np.broadcast_to(sig[v.source if key == "source" else v.uses[0]][:, None, None],
                                                P5_SHAPE) for v in vs]))
        stores.append(st)
    hf = loso.HeadFeatures()
    cached = [loso.CachedFeatures(s, hf) for s in stores]
    sig_feat = {s: cached[0](np.array([SOURCES.index(s) * 6]))[0, :, 0, 0] for s in SOURCES}
    seen: list[tuple[str, np.ndarray]] = []
    real_fit = lh.fit_mlp

    def spy(x: np.ndarray, y: np.ndarray, context: bool, hidden: int, epochs: int, **k: object) -> lh.MLPHead:
        seen.append((held[0], x))
        return real_fit(x, y, context, 8, 1, **k)  # type: ignore[arg-type]

    held = [""]
    orig = lh.fit_fold

    def fold_spy(stores_: object, cached_: object, samples: object, h: str | None, *a: object) -> lh.MLPHead:
        held[0] = h or ""
        return orig(stores_, cached_, samples, h, *a)  # type: ignore[arg-type]

    lh.fit_mlp, lh.fit_fold = spy, fold_spy  # type: ignore[assignment]
    try:
        res = lh.run_folds(stores, cached, context=True, mining=1, bg_per_view=2, hidden=8, epochs=1,
                           save=tmp_path / "run")
    finally:
        lh.fit_mlp, lh.fit_fold = real_fit, orig  # type: ignore[assignment]
    assert set(res) == set(lh.VARIANTS)
    assert {h for h, _ in seen} == set(SOURCES)
    for h, x in seen:
        dist = {s: np.abs(x[:, :1280] - sig_feat[s]).max(axis=1).min() for s in SOURCES}
        assert dist[h] > 1e-3, f"fold {h} trained on its own source"
        assert all(dist[s] < 1e-3 for s in SOURCES if s != h)
    for folds in res.values():
        assert [f.source for f in folds] == sorted(SOURCES)
        for f in folds:
            assert len(f.scores) == 3 and f.left_out_composites == 1 and np.isfinite(f.scores).all()
    again = lh.load_folds(tmp_path / "run")  # folds saved as they finish merge into the same table
    for v in lh.VARIANTS:
        assert [f.source for f in again[v]] == [f.source for f in res[v]]
        for a, b in zip(again[v], res[v], strict=True):
            np.testing.assert_array_equal(a.scores, b.scores)
            assert a.kinds == b.kinds and a.train_views == b.train_views
    s = loso.summarise(res["margin_obj"], 0.01)
    assert len(s["per_source"]) == len(SOURCES)
