"""The region classifier as one ONNX graph in the LiftGuard model format (docs/MODEL_FORMAT.md v1).

Frozen ImageNet EfficientNet-Lite0 (stages 1–7 and its 1×1 head conv, 1280 ch at stride 32) → the
linear softmax head trained by `tools.loso` applied to every cell → every cell-aligned window's mean
logits from an integral image (a linear head commutes with averaging, so this equals classifying each
window's pooled features) → softmax → the 50 best (window, class) pairs over the object classes as
rows ``x1, y1, x2, y2, score, class`` in input pixels. The device's NMS and thresholds do the rest.

Trained and exported by ``python -m tools.loso ... --export models/liftguard-det.onnx`` (its threshold is
the LOSO-chosen one).
"""

from __future__ import annotations

import json
import logging
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
    LinearHead,
    all_windows,
)
from tools.model import TOP_K, EfficientNetLite0

log = logging.getLogger("tools.regionnet")
OBJECT_CLASSES = R_CLASSES[:BACKGROUND]


class RegionNet(nn.Module):
    i22: torch.Tensor
    i12: torch.Tensor
    i21: torch.Tensor
    i11: torch.Tensor
    area: torch.Tensor
    bias: torch.Tensor
    boxes: torch.Tensor

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


def export_region(head: LinearHead, out: Path, threshold: float, version: str, trained_on: str) -> None:
    from tools.export import export_model, metadata

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".head.npz"), w=head.w, b=head.b)
    net = RegionNet(head).eval()
    thresholds = {"ebike": threshold, "bicycle": 0.5, "wheelchair": 0.5, "stroller": 0.5, "person": 0.5}
    props = metadata({"version": version, "classes": OBJECT_CLASSES, "trained_on": trained_on,
                      "thresholds": thresholds})
    export_model(net, out, props)  # type: ignore[arg-type]
    log.info("wrote %s (%s)", out, json.dumps(thresholds))
