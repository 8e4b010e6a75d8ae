"""Detection: the `Detector` seam and its onnxruntime backend.

The model file carries its own metadata (docs/MODEL_FORMAT.md), so a model swap is a config
change. A corrupt or mismatched model is refused at start-up with a message that says why.

Which model runs: `detector.model_path` when the config names one (a model rolled out by the fleet comes
first, edge/run/models.py); otherwise the shipped model, package data of `edge` (edge/assets/, found through
importlib.resources, so a wheel install has it as well as a checkout, where the file is a link to
models/liftguard-det.onnx).
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from contract.errors import ModelError
from contract.model_format import INPUT_NAME, OUTPUT_NAME, PAD_VALUE, letterbox_params
from contract.onnx_header import ParsedProps, parse_props

log = logging.getLogger(__name__)

# The shipped model and its card are package data (pyproject: edge = ["assets/*"]).
DEFAULT_MODEL = Path(str(importlib.resources.files("edge").joinpath("assets", "liftguard-det.onnx")))

Box = tuple[float, float, float, float]
ImageBGR = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Detection:
    """One object in one frame: box (x1, y1, x2, y2) in frame pixels, score 0..1, class name."""

    box: Box
    score: float
    cls: str

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"box corners out of order: {self.box}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score out of range: {self.score}")

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass(frozen=True)
class ModelMetadata(ParsedProps):
    """The model file's metadata as the device uses it; the rules live in contract/onnx_header.py, shared
    with the fleet's model registry."""

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        p = parse_props(props, source)
        return cls(**{f.name: getattr(p, f.name) for f in fields(ParsedProps)})


class Detector(Protocol):
    """Anything that turns a BGR frame into detections in frame pixels."""

    metadata: ModelMetadata

    def detect(self, frame: ImageBGR) -> list[Detection]: ...


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: scale, then centred padding."""

    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, frame_w: int, frame_h: int, input_w: int, input_h: int) -> Letterbox:
        scale, left, top = letterbox_params(frame_w, frame_h, input_w, input_h)
        return cls(scale, left, top)

    def to_frame(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = boxes.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou: float) -> list[int]:
    """Greedy NMS over the given boxes (callers offset boxes per class to keep classes apart)."""
    order = list(np.argsort(-scores))
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-6)
        order = [int(j) for j, o in zip(rest, overlap, strict=True) if o < iou]
    return keep


class OnnxDetector:
    """onnxruntime on the CPU. Validates the model at construction; `detect` is the hot path."""

    def __init__(self, path: str | Path | None = None, threads: int = 2, min_score: float = 0.2,
                 nms_iou: float = 0.6) -> None:
        import onnxruntime as ort  # imported here so tools that never detect start fast

        self.path = Path(path) if path else DEFAULT_MODEL
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private types for a bad file
            raise ModelError(f"{self.path}: cannot load model ({str(exc).splitlines()[0][:200]})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = ModelMetadata.from_props(props, str(self.path))
        self._check_io()
        self.min_score = min_score
        self.nms_iou = nms_iou
        m = self.metadata
        self._mean = np.array(m.mean, np.float32) * 255.0
        self._inv_std = 1.0 / (np.array(m.std, np.float32) * 255.0)
        self.last_inference_ms = 0.0
        log.info("model %s loaded from %s (%d classes, input %dx%d)", m.model_id, self.path,
                 len(m.classes), m.input_w, m.input_h)

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        m = self.metadata
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelError(f"{self.path}: expected one input named {INPUT_NAME!r}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3 or (shape[2], shape[3]) != (m.input_h, m.input_w):
            raise ModelError(f"{self.path}: input shape {shape} does not match metadata {m.input_w}x{m.input_h}")
        names = [o.name for o in outputs]
        if OUTPUT_NAME not in names:
            raise ModelError(f"{self.path}: no output named {OUTPUT_NAME!r} (has {names})")
        out_shape = outputs[names.index(OUTPUT_NAME)].shape
        if len(out_shape) != 3 or out_shape[2] != 6:
            raise ModelError(f"{self.path}: output shape {out_shape}, expected [1, K, 6]")

    def preprocess(self, frame: ImageBGR) -> tuple[npt.NDArray[np.float32], Letterbox]:
        m = self.metadata
        h, w = frame.shape[:2]
        lb = Letterbox.fit(w, h, m.input_w, m.input_h)
        new_w, new_h = round(w * lb.scale), round(h * lb.scale)
        canvas = np.full((m.input_h, m.input_w, 3), PAD_VALUE, np.uint8)
        px, py = int(lb.pad_x), int(lb.pad_y)
        canvas[py:py + new_h, px:px + new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA)
        rgb = canvas[:, :, ::-1].astype(np.float32)
        tensor = ((rgb - self._mean) * self._inv_std).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(tensor), lb

    def detect(self, frame: ImageBGR) -> list[Detection]:
        tensor, lb = self.preprocess(frame)
        started = time.perf_counter()
        (raw,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: tensor})
        self.last_inference_ms = (time.perf_counter() - started) * 1000.0
        return self.postprocess(np.asarray(raw, np.float32)[0], lb, frame.shape[1], frame.shape[0])

    def postprocess(self, rows: npt.NDArray[np.float32], lb: Letterbox, frame_w: int,
                    frame_h: int) -> list[Detection]:
        rows = rows[rows[:, 4] >= self.min_score]
        n_classes = len(self.metadata.classes)
        rows = rows[(rows[:, 5] >= 0) & (rows[:, 5] < n_classes)]
        if len(rows) == 0:
            return []
        boxes = lb.to_frame(rows[:, :4])
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, frame_w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, frame_h)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, rows = boxes[valid], rows[valid]
        # Per-class NMS: a wheelchair seen on the same object as an e-bike must survive, because
        # that overlap is exactly the veto evidence the policy needs.
        offset = rows[:, 5:6] * (max(frame_w, frame_h) + 1.0)
        keep = nms(boxes + offset, rows[:, 4], self.nms_iou)
        return [
            Detection(
                box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
                score=float(min(max(rows[i, 4], 0.0), 1.0)),
                cls=self.metadata.classes[int(rows[i, 5])],
            )
            for i in keep
        ]


REFERENCE_CLIP = Path(str(importlib.resources.files("edge").joinpath("assets", "demo_clip.mp4")))
REFERENCE_FRAMES = (0, 40)  # an empty car, and the bundled e-bike fully in view


def reference_frames(clip: Path = REFERENCE_CLIP, indices: tuple[int, ...] = REFERENCE_FRAMES) -> list[ImageBGR]:
    """The bundled reference frames (procedural, from the demo clip) for the start-up self-check."""
    cap = cv2.VideoCapture(str(clip))
    frames: dict[int, ImageBGR] = {}
    try:
        for i in range(max(indices) + 1):
            ok, image = cap.read()
            if not ok:
                break
            if i in indices:
                frames[i] = np.asarray(image, np.uint8)
    finally:
        cap.release()
    if len(frames) != len(indices):
        raise ModelError(f"reference clip {clip} is unreadable: cannot self-check the model")
    return [frames[i] for i in indices]


def self_check(detector: Detector, frames: list[ImageBGR] | None = None) -> None:
    """Refuse a model that loads but cannot be trusted: raw scores outside [0, 1] (or not finite), or
    the same output for different reference frames (a constant model sees nothing). Start-up only."""
    session = getattr(detector, "session", None)
    if session is None or not isinstance(detector, OnnxDetector):
        return  # not an ONNX model (a test double): nothing to run the raw check on
    outputs = []
    for image in frames if frames is not None else reference_frames():
        tensor, _ = detector.preprocess(image)
        (raw,) = session.run([OUTPUT_NAME], {INPUT_NAME: tensor})
        outputs.append(np.asarray(raw, np.float32)[0])
    source = str(detector.path)
    for rows in outputs:
        if not np.all(np.isfinite(rows)):
            raise ModelError(f"{source}: self-check failed: the model outputs NaN or infinite values")
        scores = rows[:, 4]
        if scores.size and (scores.min() < -1e-6 or scores.max() > 1 + 1e-6):
            raise ModelError(f"{source}: self-check failed: scores outside [0, 1] "
                             f"({float(scores.min()):.3g}..{float(scores.max()):.3g}); wrong output layout?")
    if all(o.shape == outputs[0].shape and np.allclose(o, outputs[0], atol=1e-6) for o in outputs[1:]):
        raise ModelError(f"{source}: self-check failed: identical output for different reference frames "
                         "(a constant model detects nothing)")
    log.info("model self-check passed on %d reference frames", len(outputs))


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
