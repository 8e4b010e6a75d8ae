"""Grouped K-fold check on the real elevator images: none is scored by a head that trained on it.

    python -m tools.crossval --run /work/runs/v2 --out /work/runs/v2/cv_real

Reuses the run's cached features: for each fold a fresh head (and, for a run trained with
`--tune-tail`, the backbone's stride-32 tail reset to its ImageNet weights) trains on every cached
view except those of the fold's source groups (a CCTV burst is one group), is exported through the
same ONNX path as the shipped model, and scores the fold's images with `tools.evaluate`.
`--max-views` caps each fold's training views (all real e-bike views kept, the rest sampled) so that
a tuned-tail run can be cross-validated in minutes rather than hours; the cap is recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tools.evaluate import evaluate
from tools.export import export_model, metadata
from tools.features import SYNTHETIC_PREFIX, FeatureCache, Sample
from tools.model import CLASSES, CenterHead, LiftGuardDetector

log = logging.getLogger("tools.crossval")
REAL_SOURCE = "etoiles-elevator-ebike"


def grouped_folds(groups: Sequence[str], k: int) -> dict[str, int]:
    """Largest group first into the fold with fewest images; deterministic."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    load = [0] * k
    out: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        f = load.index(min(load))
        out[g] = f
        load[f] += sizes[g]
    return out


def _corpus_root(samples: Sequence[Sample]) -> Path:
    return samples[0].image.parent.parent.parent


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _leaky_synthetic(samples: Sequence[Sample], held: set[str]) -> set[int]:
    """Generated scenes that may show a held-out photo through a pasted cut-out.

    With the data engine's cutouts.csv (file → cut-out source group) exactly those scenes go; without
    it every scene with a real e-bike cut-out goes (conservative: street-moped cut-outs go too).
    """
    root = _corpus_root(samples)
    index = {s.image.name: i for i, s in enumerate(samples)}
    if (root / "cutouts.csv").exists():
        return {index[r["file"]] for r in _read_csv(root / "cutouts.csv")
                if r["cutout_source_group"] in held and r["file"] in index}
    licences = {r["file"]: r.get("licence", "") for r in _read_csv(root / "manifest.csv")}
    return {i for i, s in enumerate(samples)
            if s.source.startswith(SYNTHETIC_PREFIX) and s.has_ebike and "cut-out" in licences.get(s.image.name, "")}


def _fold_of(real: Sequence[Sample], k: int) -> dict[str, int]:
    """The corpus's own grouped folds (folds.csv) when it has them, else ours."""
    path = _corpus_root(real) / "folds.csv"
    if path.exists():
        rows = {r["source_group"]: int(r["fold"]) for r in _read_csv(path)}
        if all(s.group in rows for s in real):
            return {s.group: rows[s.group] for s in real}
    return grouped_folds([s.group for s in real], k)


def _link_fold(samples: Sequence[Sample], dst: Path) -> None:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    for s in samples:
        label = s.image.parent.parent.parent / "labels" / s.image.parent.name / f"{s.image.stem}.txt"
        for src, d in ((s.image, dst / "images" / s.image.name), (label, dst / "labels" / label.name)):
            if not d.exists():
                os.symlink(src, d)


def cap_views(keep: torch.Tensor, samples: Sequence[Sample], sample_index: torch.Tensor, max_views: int,
              seed: int) -> torch.Tensor:
    """At most `max_views` of the kept views: every real e-bike view, then a seeded sample of the rest."""
    if max_views <= 0 or int(keep.sum()) <= max_views:
        return keep
    precious = torch.tensor([samples[int(i)].has_ebike and not samples[int(i)].source.startswith(SYNTHETIC_PREFIX)
                             for i in sample_index]) & keep
    rest = (keep & ~precious).nonzero().flatten()
    room = max(max_views - int(precious.sum()), 0)
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[:room]]
    out = precious.clone()
    out[pick] = True
    return out


def run_cv(run: Path, out: Path, folds: int, epochs: int, seed: int, source: str = REAL_SOURCE,
           tune_tail: bool | None = None, max_views: int = 0) -> dict[str, Any]:
    from tools.train import CachedDetector, train_cached

    cache = torch.load(run / "features.pt", map_location="cpu", weights_only=False)
    train_c: FeatureCache = cache["train"]
    train_s: list[Sample] = cache["train_samples"]
    real = [s for s in [*train_s, *cache["val_samples"]] if s.source == source]
    fold_of = _fold_of(real, folds)
    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    if tune_tail is None:
        tune_tail = bool(ckpt.get("tuned_tail", False))
    ebike_weight = float(ckpt.get("ebike_weight", 1.0))  # each fold follows the run's recipe
    log.info("%d real %s images in %d groups, %d folds", len(real), source, len(fold_of), len(set(fold_of.values())))
    per_fold, hits, n_img = [], 0, 0
    n_leaky = 0
    for f in sorted(set(fold_of.values())):
        held = {g for g, k in fold_of.items() if k == f}
        leaky = _leaky_synthetic(train_s, held)
        n_leaky += len(leaky)
        test = [s for s in real if s.group in held]
        if not test:
            continue
        keep = torch.tensor([train_s[int(i)].group not in held and int(i) not in leaky
                             for i in train_c.sample_index])
        keep = cap_views(keep, train_s, train_c.sample_index, max_views, seed + f)
        model = LiftGuardDetector()
        # ImageNet backbone: the cached features came from it, and a tuned tail must not have seen the fold.
        model.backbone.load_pretrained()
        model.head = CenterHead()
        torch.manual_seed(seed + f)
        net = CachedDetector(model.head, model.backbone.tail() if tune_tail else None)
        train_cached(net, train_c.subset(keep), None, epochs, 3e-3, 64, seed + f, desc=f"fold {f}",
                     ebike_weight=ebike_weight)
        fold_dir = out / f"fold{f}"
        onnx_path = fold_dir / "model.onnx"
        export_model(model.eval(), onnx_path, metadata({**ckpt, "version": f"cv-fold{f}"}))
        _link_fold(test, fold_dir / "data")
        names = fold_dir / "data" / "data.yaml"
        names.write_text(json.dumps({"names": CLASSES}))
        m = evaluate(onnx_path, fold_dir / "data" / "images", fold_dir / "eval", fold_dir / "data" / "labels",
                     names, thresholds=ckpt.get("thresholds"), bench_runs=0)
        hits += round((m["ebike_recall"] or 0) * m["n_expected_block"])
        n_img += m["n_expected_block"]
        per_fold.append({"fold": f, "images": len(test), "groups": sorted(held), "ebike_recall": m["ebike_recall"],
                         "ebike_AP50": m["per_class"]["ebike"]["AP50"],
                         "ebike_box_recall": m["per_class"]["ebike"]["recall"],
                         "train_views": int(keep.sum()), "left_out_synthetic": len(leaky)})
        log.info("fold %d: %s", f, per_fold[-1])
    summary = {"source": source, "left_out_synthetic": n_leaky, "folds": per_fold, "images": n_img, "blocked": hits,
               "ebike_image_recall": hits / n_img if n_img else None, "epochs": epochs,
               "tuned_tail": tune_tail, "ebike_weight": ebike_weight, "max_views": max_views}
    (out / "cv_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=4, help="used when the corpus has no folds.csv")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default=REAL_SOURCE, help="manifest source whose images are cross-validated")
    ap.add_argument("--max-views", type=int, default=0, help="cap on training views per fold (0: all)")
    tail = ap.add_mutually_exclusive_group()
    tail.add_argument("--tune-tail", dest="tune_tail", action="store_true", default=None,
                      help="fine-tune the stride-32 tail per fold (default: as the run was trained)")
    tail.add_argument("--frozen-tail", dest="tune_tail", action="store_false")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    s = run_cv(args.run, args.out, args.folds, args.epochs, args.seed, args.source, args.tune_tail, args.max_views)
    print(json.dumps({k: v for k, v in s.items() if k != "folds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
