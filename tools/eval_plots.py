"""Plots written by `liftguard eval`: confusion matrices, PR curves, a contact sheet of mistakes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tools.metrics import DetectionLike, class_curve, iou_matrix, threshold_for

# matplotlib comes with the `plots` extra (and `train`); a device install writes metrics and the contact
# sheet (OpenCV) and skips the two charts. PLOTS_MISSING says why, or is "" when charts can be drawn.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as exc:  # pragma: no cover - exercised by tests/test_install_graph.py in a subprocess
    PLOTS_MISSING = f"matplotlib not installed ({exc})"
else:
    PLOTS_MISSING = ""

THUMB_W, THUMB_H = 320, 240
MAX_SHEET = 30


def box_confusion(dets: Sequence[Sequence[DetectionLike]], truths: Sequence[np.ndarray], names: Sequence[str],
                  thr: Mapping[str, float]) -> np.ndarray:
    """Rows: true class + background; columns: predicted class + missed (IoU ≥ 0.5, operating thresholds)."""
    n = len(names)
    m = np.zeros((n + 1, n + 1), np.int64)
    for d_img, t_img in zip(dets, truths, strict=True):
        kept = [d for d in d_img if d.score >= threshold_for(thr, d.cls)]
        used = np.zeros(len(kept), bool)
        if len(t_img) and kept:
            ious = iou_matrix(t_img[:, 1:5], np.array([d.box for d in kept]))
        for gi, g in enumerate(t_img):
            j = -1
            if kept:
                row = np.where(used, 0.0, ious[gi])
                j = int(np.argmax(row)) if row.max() >= 0.5 else -1
            if j >= 0:
                used[j] = True
                m[int(g[0]), names.index(kept[j].cls)] += 1
            else:
                m[int(g[0]), n] += 1
        for d, u in zip(kept, used, strict=True):
            if not u:
                m[n, names.index(d.cls)] += 1
    return m


def save_confusion(path: Path, dets: Sequence[Sequence[DetectionLike]], truths: Sequence[np.ndarray],
                   names: Sequence[str], thr: Mapping[str, float], rows: Sequence[Mapping[str, Any]]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    m = box_confusion(dets, truths, names, thr)
    _matrix(axes[0], m, [*names, "background"], [*names, "missed"], "boxes (IoU 0.5, operating thresholds)")
    img = np.zeros((2, 2), np.int64)
    for r in rows:
        img[int(r["expected"] == "allow"), int(r["decided"] == "allow")] += 1
    _matrix(axes[1], img, ["expect block", "expect allow"], ["block", "allow"], "images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _matrix(ax: Any, m: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> None:
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=8)


def save_pr_curves(path: Path, dets: Sequence[Sequence[DetectionLike]], truths: Sequence[np.ndarray],
                   names: Sequence[str]) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    for cls in names:
        curve = class_curve(dets, truths, names, cls)
        if curve.n_gt:
            p, r = curve.precision_recall()
            ax.plot(r, p, label=f"{cls} AP50={curve.ap50():.2f} (n={curve.n_gt})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="PR curves (IoU 0.5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_contact_sheet(path: Path, files: Sequence[Path], rows: Sequence[Mapping[str, Any]],
                       dets: Sequence[Sequence[DetectionLike]], thr: Mapping[str, float]) -> None:
    """Missed e-bikes and false blocks, with the detections above threshold drawn on them."""
    bad = [i for i, r in enumerate(rows) if r["expected"] != r["decided"]][:MAX_SHEET]
    cols = 5
    n_rows = max(1, (len(bad) + cols - 1) // cols)
    sheet = np.full((n_rows * THUMB_H, cols * THUMB_W, 3), 40, np.uint8)
    for k, i in enumerate(bad):
        frame = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if frame is None:
            continue
        for d in dets[i]:
            if d.score >= threshold_for(thr, d.cls):
                x1, y1, x2, y2 = (int(v) for v in d.box)
                colour = (0, 0, 255) if d.cls == "ebike" else (0, 200, 0)
                cv2.rectangle(frame, (x1, y1), (x2, y2), colour, max(1, frame.shape[1] // 300))
                cv2.putText(frame, f"{d.cls} {d.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                            max(0.4, frame.shape[1] / 900), colour, 1)
        thumb = cv2.resize(frame, (THUMB_W, THUMB_H))
        label = "MISSED" if rows[i]["expected"] == "block" else "FALSE BLOCK"
        cv2.putText(thumb, f"{label} {files[i].name[:28]}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
        r, c = divmod(k, cols)
        sheet[r * THUMB_H : (r + 1) * THUMB_H, c * THUMB_W : (c + 1) * THUMB_W] = thumb
    if not bad:
        cv2.putText(sheet, "no misses, no false blocks", (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    cv2.imwrite(str(path), sheet)
