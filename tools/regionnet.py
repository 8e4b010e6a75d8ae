"""The region classifier as one ONNX graph in the LiftGuard model format (docs/MODEL_FORMAT.md v1).

Frozen ImageNet EfficientNet-Lite0 (stages 1–7 and its 1×1 head conv, 1280 ch at stride 32) → the
linear softmax head trained by `tools.loso` applied to every cell → every cell-aligned window's mean
logits from an integral image (a linear head commutes with averaging, so this equals classifying each
window's pooled features) → softmax → the 50 best (window, class) pairs over the object classes as
rows ``x1, y1, x2, y2, score, class`` in input pixels. The device's NMS and thresholds do the rest.

    python -m tools.regionnet --views /work/runs/views --views /work/runs/composites \
        --threshold 0.8 --version 0.7.0 --out models/liftguard-det.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.loso import (
    BACKGROUND,
    CELL,
    GRID_W,
    R_CLASSES,
    CachedFeatures,
    HeadFeatures,
    LinearHead,
    all_windows,
    fit_head,
    hard_negatives,
    sample_views,
)
from tools.model import TOP_K, EfficientNetLite0

log = logging.getLogger("tools.regionnet")
OBJECT_CLASSES = R_CLASSES[:BACKGROUND]


class RegionNet(nn.Module):
    def __init__(self, head: LinearHead) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0()
        self.backbone.load_pretrained()
        n = len(R_CLASSES)
        self.cls = nn.Conv2d(1280, n, 1, bias=False)
        with torch.no_grad():
            self.cls.weight.copy_(torch.from_numpy(head.w.T.copy()).reshape(n, 1280, 1, 1))
        win = all_windows()
        stride = GRID_W + 1
        y1, x1, y2, x2 = (torch.from_numpy(win[:, i].copy()) for i in range(4))
        self.register_buffer("i22", y2 * stride + x2)
        self.register_buffer("i12", y1 * stride + x2)
        self.register_buffer("i21", y2 * stride + x1)
        self.register_buffer("i11", y1 * stride + x1)
        self.register_buffer("area", ((y2 - y1) * (x2 - x1)).float())
        self.register_buffer("bias", torch.from_numpy(head.b.copy()).reshape(n, 1))
        self.register_buffer("boxes", (torch.stack([x1, y1, x2, y2], 1) * CELL).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        p5 = b.p4_to_p5(b.stem_to_p4(images))
        f = F.relu6(b._bn1(b._conv_head(p5)))
        cells = self.cls(f)[0]  # [C, H, W]
        ii = F.pad(cells.cumsum(1).cumsum(2), (1, 0, 1, 0)).reshape(cells.shape[0], -1)
        s = ii[:, self.i22] - ii[:, self.i12] - ii[:, self.i21] + ii[:, self.i11]
        p = torch.softmax(s / self.area + self.bias, dim=0)[:BACKGROUND]  # [C-1, W]
        scores, idx = p.reshape(-1).topk(TOP_K)
        n_win = p.shape[1]
        cls = torch.div(idx, n_win, rounding_mode="floor")
        boxes = self.boxes[idx % n_win]
        return torch.cat([boxes, scores[:, None], cls[:, None].float()], 1)[None]


def train_full(stores: Sequence[Path], mining: int, bg_per_view: int, seed: int, l2: float) -> LinearHead:
    from tools.views import Store

    feats = HeadFeatures()
    st = [Store(p) for p in stores]
    cached = [CachedFeatures(s, feats) for s in st]
    smp = [sample_views(s, c, False, bg_per_view, seed) for s, c in zip(st, cached, strict=True)]
    x, y = np.concatenate([s.x for s in smp]), np.concatenate([s.y for s in smp])
    head = fit_head(x, y, l2)
    if mining:
        for s, c in zip(st, cached, strict=True):
            hn = hard_negatives(s, np.arange(len(s.views)), c, head, mining)
            x, y = np.concatenate([x, hn.x]), np.concatenate([y, hn.y])
        head = fit_head(x, y, l2)
    return head


def main(argv: Sequence[str] | None = None) -> int:
    from tools.export import export_model, metadata

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threshold", type=float, required=True, help="e-bike operating point (from tools.loso)")
    ap.add_argument("--version", required=True)
    ap.add_argument("--mining", type=int, default=2)
    ap.add_argument("--bg-per-view", type=int, default=6)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trained-on", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    head = train_full(args.views, args.mining, args.bg_per_view, args.seed, args.l2)
    np.savez(args.out.with_suffix(".head.npz"), w=head.w, b=head.b)
    net = RegionNet(head).eval()
    thresholds = {"ebike": args.threshold, "bicycle": 0.5, "wheelchair": 0.5, "stroller": 0.5, "person": 0.5}
    props = metadata({"version": args.version, "classes": OBJECT_CLASSES, "trained_on": args.trained_on,
                      "thresholds": thresholds})
    props["model_id"] = f"liftguard-region-{args.version}"
    export_model(net, args.out, props)  # type: ignore[arg-type]
    log.info("wrote %s (%s)", args.out, json.dumps(thresholds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
