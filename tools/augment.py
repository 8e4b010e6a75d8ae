"""Letterboxing and the training-time augmentations applied before backbone features are cached.

Boxes are float arrays [N, 5] of (class, x1, y1, x2, y2) in pixels of the image they go with.
"""

from __future__ import annotations

import cv2
import numpy as np

from contract import model_format
from contract.model_format import PAD_VALUE
from tools.model import INPUT_H, INPUT_W

# A box cut by a crop keeps its label only if this much of it is still visible; less is not learnable.
MIN_VISIBLE = 0.35


def letterbox_params(w: int, h: int, out_w: int = INPUT_W, out_h: int = INPUT_H) -> tuple[float, int, int]:
    """Scale and centred padding (left, top) exactly as MODEL_FORMAT.md specifies."""
    return model_format.letterbox_params(w, h, out_w, out_h)


def letterbox(rgb: np.ndarray, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    scale, left, top = letterbox_params(w, h)
    return _place(rgb, _as_boxes(boxes), scale, left, top)


def normalise(rgb_u8: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB → CHW float32: (x/255 - MEAN) / STD per channel (the model format's normalisation)."""
    x = rgb_u8.astype(np.float32) / 255.0
    mean = np.array(model_format.MEAN, np.float32)
    std = np.array(model_format.STD, np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def _as_boxes(boxes: np.ndarray | None) -> np.ndarray:
    return np.zeros((0, 5), np.float32) if boxes is None else boxes.astype(np.float32).reshape(-1, 5)


def _place(rgb: np.ndarray, boxes: np.ndarray, scale: float, left: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize by `scale` and paste at (left, top) on a pad-114 canvas, clipping what falls outside."""
    h, w = rgb.shape[:2]
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((INPUT_H, INPUT_W, 3), PAD_VALUE, np.uint8)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + nw, INPUT_W), min(top + nh, INPUT_H)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    out = boxes.copy()
    out[:, 1:] = out[:, 1:] * scale
    out[:, [1, 3]] += left
    out[:, [2, 4]] += top
    return canvas, _clip(out)


def _clip(boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return boxes
    area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    c = boxes.copy()
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, INPUT_W)
    c[:, [2, 4]] = c[:, [2, 4]].clip(0, INPUT_H)
    w, h = c[:, 3] - c[:, 1], c[:, 4] - c[:, 2]
    keep = (w >= 3) & (h >= 3) & (w * h >= MIN_VISIBLE * np.maximum(area, 1e-6))
    return np.asarray(c[keep], np.float32)


def _rot90(rgb: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k×90° counter-clockwise; a ceiling camera sees vehicles in any orientation."""
    out = boxes.copy()
    for _ in range(k % 4):
        w = rgb.shape[1]
        rgb = np.ascontiguousarray(np.rot90(rgb))
        x1, y1, x2, y2 = out[:, 1].copy(), out[:, 2].copy(), out[:, 3].copy(), out[:, 4].copy()
        out[:, 1], out[:, 2], out[:, 3], out[:, 4] = y1, w - x2, y2, w - x1
    return rgb, out


def _rotate_small(rgb: np.ndarray, boxes: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    rgb = cv2.warpAffine(rgb, m, (w, h), borderValue=(PAD_VALUE,) * 3)
    if len(boxes) == 0:
        return rgb, boxes
    # Rotate the corners and take their hull, shrunk a little since the corners overstate the object.
    xs = boxes[:, [1, 3, 3, 1]]
    ys = boxes[:, [2, 2, 4, 4]]
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=2) @ m.T  # [N, 4, 2]
    out = boxes.copy()
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    shrink = (hi - lo) * 0.5 * (abs(np.sin(np.radians(deg))) * 0.5)
    out[:, 1:3], out[:, 3:5] = lo + shrink, hi - shrink
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, w)
    out[:, [2, 4]] = out[:, [2, 4]].clip(0, h)
    return rgb, out


def _colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x: np.ndarray = rgb.astype(np.float32)
    if rng.random() < 0.15:
        # Night / IR cameras deliver grey frames.
        g = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = np.repeat(g[..., None], 3, axis=2)
    else:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
        hsv[..., 1] *= rng.uniform(0.6, 1.4)
        x = cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    x = (x - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-30, 30)
    if rng.random() < 0.15:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.6, 1.5))
    if rng.random() < 0.2:
        x = x + rng.normal(0, rng.uniform(2, 8), x.shape)
    return x.clip(0, 255).astype(np.uint8)


def augment(rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random training view, letterboxed to the model input: flips, rotation, scale/crop, colour."""
    boxes = _as_boxes(boxes)
    if rng.random() < 0.5:
        w = rgb.shape[1]
        rgb = np.ascontiguousarray(rgb[:, ::-1])
        boxes = boxes.copy()
        boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
    if rng.random() < 0.25:
        rgb, boxes = _rot90(rgb, boxes, int(rng.integers(1, 4)))
    if rng.random() < 0.3:
        rgb, boxes = _rotate_small(rgb, boxes, float(rng.uniform(-15, 15)))
    h, w = rgb.shape[:2]
    fit, _, _ = letterbox_params(w, h)
    scale = fit * float(np.exp(rng.uniform(np.log(0.6), np.log(1.5))))
    nw, nh = w * scale, h * scale
    # Random placement: anywhere from fully inside to partly outside (crop), centred on average.
    left = round(rng.uniform(min(0.0, INPUT_W - nw), max(0.0, INPUT_W - nw)))
    top = round(rng.uniform(min(0.0, INPUT_H - nh), max(0.0, INPUT_H - nh)))
    canvas, boxes = _place(rgb, boxes, scale, left, top)
    return _colour(canvas, rng), boxes
