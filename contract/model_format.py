"""The model file format, version 1 (docs/MODEL_FORMAT.md): what training writes and the device reads.

Pure Python (no numpy, no onnx): the metadata keys an ONNX file must carry, the input and output
names, and the letterbox and normalisation both sides apply. Training (tools/) and inference
(edge/decide/detect.py) take these from here so the two cannot drift apart.
"""

from __future__ import annotations

FORMAT_VERSION = "1"
INPUT_NAME = "images"
OUTPUT_NAME = "detections"
OUTPUT_LAYOUT = "xyxy_score_class"

# metadata_props every LiftGuard model carries; the loader refuses a file that lacks one
REQUIRED_KEYS = ("liftguard_format", "model_id", "classes", "input_size", "mean", "std", "output_layout")

# The classes training labels use, in YOLO class-id order (tools/corpus.py CLASSES, tools/model.py): the fleet's
# dataset export writes label files with these ids and its per-object corrections offer these names.
TRAINING_CLASSES = ("ebike", "bicycle", "wheelchair", "stroller", "person", "cart")

# Letterbox: scale to fit, centre, pad with this grey on every channel.
PAD_VALUE = 114
LETTERBOX = f"center,{PAD_VALUE}"  # the `letterbox` metadata value export writes

# Normalisation of RGB in [0, 1]: (x - mean) / std, per channel; what today's models are trained with.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def letterbox_params(w: int, h: int, out_w: int, out_h: int) -> tuple[float, int, int]:
    """Scale and centred padding (left, top) that fit a w×h image into out_w×out_h."""
    scale = min(out_w / w, out_h / h)
    nw, nh = round(w * scale), round(h * scale)
    return scale, (out_w - nw) // 2, (out_h - nh) // 2
