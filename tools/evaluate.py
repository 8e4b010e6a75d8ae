"""Score a LiftGuard model on a folder of images, through the device's own detector.

    liftguard eval --model M --images DIR (--labels DIR --names data.yaml | --truth truth.csv) --out OUTDIR

Image-level decision as on the device: "block" iff an e-bike detection ≥ the e-bike threshold is not
vetoed by a wheelchair/stroller (≥ its threshold) overlapping it with IoU ≥ 0.3. With YOLO labels an
image is expected to block iff it has an e-bike box; a truth CSV gives `image,expected` directly.
`false_block_rate` counts every e-bike-free image; with labels it is also split into `protected_*`
(images showing a wheelchair, stroller, bicycle or person) and `background_*` (the rest).
`veto_evidence` says, per labelled e-bike / wheelchair / stroller box, how often a veto-class detection
lies on it: the veto working (wheelchair, stroller) or a false veto that would release a hold (e-bike).
Writes metrics.json, decisions.csv, confusion.png, pr_curves.png, contact_sheet.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.decide.detect import Detector
from tools.eval_plots import PLOTS_MISSING, save_confusion, save_contact_sheet, save_pr_curves
from tools.labels import IMAGE_SUFFIXES, read_yolo_labels
from tools.metrics import (
    EBIKE,
    DetectionLike,
    class_curve,
    decide,
    shows_protected,
    threshold_for,
    veto_evidence,
    wilson_interval,
)

log = logging.getLogger("tools.evaluate")
# Low floor so AP50 sees the whole PR curve; operating thresholds are applied afterwards.
SCORE_FLOOR = 0.05
BENCH_SIZE = (640, 480)


def load_detector(model_path: Path) -> Detector:
    """The one seam to the device: evaluation runs exactly the code the device runs."""
    from edge.decide.detect import OnnxDetector

    return OnnxDetector(model_path, threads=2, min_score=SCORE_FLOOR)


def _progress(files: Sequence[Path]) -> Iterable[Path]:
    """A progress bar where tqdm is installed (the train extra); the plain list on a device install."""
    try:
        from tqdm import tqdm
    except ImportError:
        return files
    bar: Iterable[Path] = tqdm(files, desc="eval", unit="img", dynamic_ncols=True)
    return bar


def _names(names_yaml: Path | None, fallback: Sequence[str]) -> list[str]:
    if names_yaml is None:
        return list(fallback)
    names = yaml.safe_load(names_yaml.read_text())["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]


def _truth_csv(path: Path) -> dict[str, bool]:
    out = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out[Path(row["image"]).name] = row["expected"].strip().lower() in {"block", "1", "true", "yes"}
    return out


def _remap(boxes: np.ndarray, label_names: Sequence[str], model_names: Sequence[str]) -> np.ndarray:
    """Label class ids → model class ids by name; classes the model lacks are dropped."""
    keep, out = [], boxes.copy()
    for i, c in enumerate(boxes[:, 0].astype(int)):
        name = label_names[c] if 0 <= c < len(label_names) else ""
        if name in model_names:
            out[i, 0] = model_names.index(name)
            keep.append(i)
    return out[keep]


def _read_bgr(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise OSError(f"cannot read image {path}")
    return np.asarray(frame, np.uint8)


def _latency(detector: Detector, frame: np.ndarray, runs: int) -> list[float]:
    for _ in range(3):  # warm-up: first runs allocate
        detector.detect(frame)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        detector.detect(frame)
        times.append((time.perf_counter() - t) * 1000.0)
    return times


def evaluate(
    model_path: str | Path, images_dir: str | Path, out_dir: str | Path, labels_dir: str | Path | None = None,
    names_yaml: str | Path | None = None, truth_csv: str | Path | None = None,
    thresholds: Mapping[str, float] | None = None, *, detector: Detector | None = None, bench_runs: int = 100,
) -> dict[str, Any]:
    """Run the detector over every image and write metrics, decisions and plots into `out_dir`."""
    images_dir, out = Path(images_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    det = detector if detector is not None else load_detector(Path(model_path))
    model_names = list(det.metadata.classes)
    thr = {**det.metadata.thresholds, **(thresholds or {})}
    label_names = _names(Path(names_yaml) if names_yaml else None, model_names)
    expected_csv = _truth_csv(Path(truth_csv)) if truth_csv else None
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if expected_csv is not None:
        files = [p for p in files if p.name in expected_csv]
    if not files:
        raise ValueError(f"no images to evaluate in {images_dir}")
    all_dets: list[list[DetectionLike]] = []
    truths: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    lat: list[float] = []
    for path in _progress(files):
        frame = _read_bgr(path)
        t = time.perf_counter()
        dets = det.detect(frame)
        lat.append((time.perf_counter() - t) * 1000.0)
        h, w = frame.shape[:2]
        boxes = np.zeros((0, 5), np.float32)
        if labels_dir is not None:
            boxes = _remap(read_yolo_labels(Path(labels_dir) / f"{path.stem}.txt", w, h), label_names, model_names)
        expected = expected_csv[path.name] if expected_csv is not None else bool(
            (boxes[:, 0] == model_names.index(EBIKE)).any())
        block, ebike_score = decide(dets, thr)
        top = max(dets, key=lambda d: d.score, default=None)
        rows.append({"image": path.name, "expected": "block" if expected else "allow",
                     "decided": "block" if block else "allow", "ebike_score": round(ebike_score, 4),
                     "top_class": top.cls if top else "", "top_score": round(top.score, 4) if top else 0.0})
        all_dets.append(list(dets))
        truths.append(boxes)
    metrics = _summarise(rows, all_dets, truths, model_names, thr, labels_dir is not None)
    metrics["latency_ms_p50"] = float(np.percentile(lat, 50))
    metrics["latency_ms_p95"] = float(np.percentile(lat, 95))
    if bench_runs > 0:
        bench = _latency(det, np.asarray(cv2.resize(_read_bgr(files[0]), BENCH_SIZE), np.uint8), bench_runs)
        metrics["latency_640x480_ms_p50"] = float(np.percentile(bench, 50))
        metrics["latency_640x480_ms_p95"] = float(np.percentile(bench, 95))
        metrics["latency_640x480_runs"] = bench_runs
    metrics["model"] = str(model_path)
    metrics["model_id"] = det.metadata.model_id
    metrics["thresholds"] = {c: threshold_for(thr, c) for c in model_names}
    _write(out, metrics, rows)
    if PLOTS_MISSING:
        log.warning("confusion.png and pr_curves.png skipped: %s (pip install 'liftguard[plots]')", PLOTS_MISSING)
    else:
        save_confusion(out / "confusion.png", all_dets, truths, model_names, thr, rows)
        if labels_dir is not None:
            save_pr_curves(out / "pr_curves.png", all_dets, truths, model_names)
    save_contact_sheet(out / "contact_sheet.png", files, rows, all_dets, thr)
    return metrics


def _summarise(rows: Sequence[Mapping[str, Any]], dets: Sequence[Sequence[DetectionLike]],
               truths: Sequence[np.ndarray], names: Sequence[str], thr: Mapping[str, float],
               have_boxes: bool) -> dict[str, Any]:
    pos = [r for r in rows if r["expected"] == "block"]
    neg = [r for r in rows if r["expected"] == "allow"]
    m: dict[str, Any] = {
        "n_images": len(rows), "n_expected_block": len(pos), "n_expected_allow": len(neg),
        "ebike_recall": sum(r["decided"] == "block" for r in pos) / len(pos) if pos else None,
        "false_block_rate": sum(r["decided"] == "block" for r in neg) / len(neg) if neg else None,
        "false_blocks": sum(r["decided"] == "block" for r in neg),
        "missed_ebikes": sum(r["decided"] == "allow" for r in pos),
    }
    # How far a rate from a few dozen images can be trusted: 40 / 42 is 95 %, but could be 84 %.
    m["ebike_recall_ci95"] = wilson_interval(len(pos) - m["missed_ebikes"], len(pos))
    m["false_block_rate_ci95"] = wilson_interval(m["false_blocks"], len(neg))
    if have_boxes:
        per_class: dict[str, dict[str, Any]] = {}
        by_class: dict[str, dict[str, Any]] = {}
        for ci, cls in enumerate(names):
            curve = class_curve(dets, truths, names, cls)
            p, r = curve.at(threshold_for(thr, cls))
            ap = curve.ap50()
            per_class[cls] = {"AP50": None if np.isnan(ap) else ap, "precision": p,
                              "recall": None if np.isnan(r) else r, "n_boxes": curve.n_gt,
                              "threshold": threshold_for(thr, cls)}
            # False blocks among e-bike-free images showing this class: the "never block them" check.
            with_cls = [row for row, t in zip(rows, truths, strict=True)
                        if row["expected"] == "allow" and len(t) and (t[:, 0] == ci).any()]
            if with_cls and cls != EBIKE:
                by_class[cls] = {"images": len(with_cls),
                                 "false_block_rate": sum(x["decided"] == "block" for x in with_cls) / len(with_cls)}
        m["per_class"] = per_class
        m["false_block_by_class"] = by_class
        m["veto_evidence"] = veto_evidence(dets, truths, names, thr)
        m.update(_protected_split(rows, truths, names))
    return m


def _protected_split(rows: Sequence[Mapping[str, Any]], truths: Sequence[np.ndarray],
                     names: Sequence[str]) -> dict[str, Any]:
    """False blocks on e-bike-free images that show a wheelchair, stroller, bicycle or person, and on the rest.

    The first is the rate the product promises to keep low; the rest ("background": street scenes of
    cars and buses, empty rooms) is reported apart because those objects never ride an elevator and
    street sources leave distant motorbikes unlabelled.
    """
    protected: list[Mapping[str, Any]] = []
    background: list[Mapping[str, Any]] = []
    for row, t in zip(rows, truths, strict=True):
        if row["expected"] == "allow":
            (protected if shows_protected(t, names) else background).append(row)
    out: dict[str, Any] = {}
    for key, group in (("protected", protected), ("background", background)):
        blocked = sum(r["decided"] == "block" for r in group)
        out[f"{key}_images"] = len(group)
        out[f"{key}_false_blocks"] = blocked
        out[f"{key}_false_block_rate"] = blocked / len(group) if group else None
        out[f"{key}_false_block_rate_ci95"] = wilson_interval(blocked, len(group))
    return out


def _write(out: Path, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out / "decisions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "expected", "decided", "ebike_score", "top_class", "top_score"])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liftguard eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="LiftGuard ONNX model")
    ap.add_argument("--images", type=Path, required=True, help="folder of images")
    ap.add_argument("--labels", type=Path, help="YOLO label folder (with --names)")
    ap.add_argument("--names", type=Path, help="data.yaml giving the label class names")
    ap.add_argument("--truth", type=Path, help="CSV with columns image,expected (block/allow)")
    ap.add_argument("--thresholds", type=json.loads, default=None, help='JSON, e.g. \'{"ebike": 0.5}\'')
    ap.add_argument("--bench-runs", type=int, default=100, help="timed runs on a 640×480 frame")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    args = ap.parse_args(argv)
    if (args.labels is None) == (args.truth is None):
        ap.error("give either --labels (and --names) or --truth")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    m = evaluate(args.model, args.images, args.out, args.labels, args.names, args.truth, args.thresholds,
                 bench_runs=args.bench_runs)
    print(json.dumps({k: m[k] for k in ("n_images", "ebike_recall", "ebike_recall_ci95", "false_block_rate",
                                        "protected_false_block_rate", "protected_false_block_rate_ci95",
                                        "background_false_block_rate", "latency_ms_p50", "latency_ms_p95")
                      if k in m}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
