"""Grouped K-fold check on the real elevator images: none is scored by a head that trained on it.

    python -m tools.crossval --run /work/runs/v2 --out /work/runs/v2/cv_real
    python -m tools.crossval --fold-models /work/runs/full/folds --data /work/data/corpus_v2 --out OUT

Reuses the run's cached features: for each fold a fresh head (and, for a run trained with
`--tune-tail`, the backbone's stride-32 tail reset to its ImageNet weights) trains on every cached
view except those of the fold's source groups (a CCTV burst is one group), is exported through the
same ONNX path as the shipped model, and scores the fold's images with `tools.evaluate`.
`--max-views` caps each fold's training views (all real e-bike views kept, the rest sampled) so that
a tuned-tail run can be cross-validated in minutes rather than hours; the cap is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tools.evaluate import evaluate
from tools.export import export_model, metadata
from tools.features import SYNTHETIC_PREFIX, FeatureCache, Sample, load_split
from tools.folds import leaky_synthetic, source_folds
from tools.model import CLASSES, CenterHead, LiftGuardDetector, complete_state

log = logging.getLogger("tools.crossval")
REAL_SOURCE = "etoiles-elevator-ebike"


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


def score_fold(model: LiftGuardDetector, ckpt: dict[str, Any], test: Sequence[Sample], fold_dir: Path,
               thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Export a fold's model through the shipped ONNX path and score it on the fold's held-out images.

    The ONNX file carries `ckpt`'s thresholds; `thresholds` overrides some of them (evaluate merges).
    """
    onnx_path = fold_dir / "model.onnx"
    export_model(model.eval(), onnx_path, metadata(ckpt))
    _link_fold(test, fold_dir / "data")
    names = fold_dir / "data" / "data.yaml"
    names.write_text(json.dumps({"names": CLASSES}))
    return evaluate(onnx_path, fold_dir / "data" / "images", fold_dir / "eval", fold_dir / "data" / "labels",
                    names, thresholds=thresholds, bench_runs=0)


def fold_row(fold: int | str, test: Sequence[Sample], held: set[str], m: dict[str, Any]) -> dict[str, Any]:
    """One fold's line in cv_metrics.json, from its `evaluate` metrics."""
    return {"fold": fold, "images": len(test), "groups": sorted(held), "ebike_recall": m["ebike_recall"],
            "ebike_AP50": m["per_class"]["ebike"]["AP50"], "ebike_box_recall": m["per_class"]["ebike"]["recall"],
            "ebike_images": m["n_expected_block"], "blocked": round((m["ebike_recall"] or 0) * m["n_expected_block"])}


def cv_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """E-bike images over all folds and how many of them were blocked."""
    n_img, hits = sum(r["ebike_images"] for r in rows), sum(r["blocked"] for r in rows)
    return {"folds": list(rows), "images": n_img, "blocked": hits,
            "ebike_image_recall": hits / n_img if n_img else None}


def score_fold_models(folds_dir: Path, data: Path, out: Path, thresholds: dict[str, float] | None = None,
                      ) -> dict[str, Any]:
    """Score fold models that `tools.train_full --cv-source` trained (each on all but its held-out groups)."""
    per_fold = []
    samples = [*load_split(data, "train"), *load_split(data, "val")]
    source = ""
    for path in sorted(folds_dir.glob("fold*.pt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        source = str(ckpt["cv_source"])
        held = set(ckpt["held_groups"])
        test = [s for s in samples if s.source == source and s.group in held]
        if not test:
            raise ValueError(f"{path.name}: none of its held-out groups is in {data}")
        model = LiftGuardDetector(len(ckpt["classes"]))
        model.load_state_dict(complete_state(ckpt["state_dict"]), strict=True)
        per_fold.append(fold_row(path.stem, test, held, score_fold(model, ckpt, test, out / path.stem, thresholds)))
        log.info("%s: %s", path.stem, per_fold[-1])
    if not per_fold:
        raise FileNotFoundError(f"no fold*.pt in {folds_dir}")
    summary = {"source": source, **cv_totals(per_fold), "fold_models": str(folds_dir),
               "thresholds": thresholds or "as trained"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_cv(run: Path, out: Path, folds: int, epochs: int, seed: int, source: str = REAL_SOURCE,
           tune_tail: bool | None = None, max_views: int = 0) -> dict[str, Any]:
    from tools.train import CachedDetector, train_cached

    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    if ckpt.get("init"):
        # Its cached features come from a detector that trained on every photo a fold would hold out.
        raise ValueError(f"{run} started from detector {ckpt['init']} (tools.train --init), whose frozen layers "
                         "trained on the held-out photos: cross-validate that detector's own run instead")
    cache = torch.load(run / "features.pt", map_location="cpu", weights_only=False)
    train_c: FeatureCache = cache["train"]
    train_s: list[Sample] = cache["train_samples"]
    real = [s for s in [*train_s, *cache["val_samples"]] if s.source == source]
    fold_of = source_folds(real, folds)
    if tune_tail is None:
        tune_tail = bool(ckpt.get("tuned_tail", False))
    ebike_weight = float(ckpt.get("ebike_weight", 1.0))  # each fold follows the run's recipe
    log.info("%d real %s images in %d groups, %d folds", len(real), source, len(fold_of), len(set(fold_of.values())))
    per_fold = []
    n_leaky = 0
    for f in sorted(set(fold_of.values())):
        held = {g for g, k in fold_of.items() if k == f}
        leaky = leaky_synthetic(train_s, held)
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
        m = score_fold(model, {**ckpt, "version": f"cv-fold{f}"}, test, out / f"fold{f}")
        per_fold.append({**fold_row(f, test, held, m), "train_views": int(keep.sum()),
                         "left_out_synthetic": len(leaky)})
        log.info("fold %d: %s", f, per_fold[-1])
    summary = {"source": source, "left_out_synthetic": n_leaky, **cv_totals(per_fold), "epochs": epochs,
               "tuned_tail": tune_tail, "ebike_weight": ebike_weight, "max_views": max_views}
    (out / "cv_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a tools.train run (its cached features train each fold)")
    ap.add_argument("--fold-models", type=Path, help="RUN/folds of a tools.train_full --cv-source run: score them")
    ap.add_argument("--data", type=Path, help="with --fold-models: the corpus holding the held-out images")
    ap.add_argument("--ebike-threshold", type=float, default=None, help="with --fold-models: score at this one")
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
    if args.fold_models:
        if args.data is None:
            ap.error("--fold-models needs --data")
        override = None if args.ebike_threshold is None else {"ebike": args.ebike_threshold}
        s = score_fold_models(args.fold_models, args.data, args.out, override)
        print(json.dumps({k: v for k, v in s.items() if k != "folds"}, indent=2))
        return 0
    if args.run is None:
        ap.error("give --run (train folds from cached features) or --fold-models")
    s = run_cv(args.run, args.out, args.folds, args.epochs, args.seed, args.source, args.tune_tail, args.max_views)
    print(json.dumps({k: v for k, v in s.items() if k != "folds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
