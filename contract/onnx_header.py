"""What an ONNX file says about itself, read without onnx or onnxruntime (the fleet has neither).

The fleet must refuse, when a model is added to its registry, every file the device would refuse at
load time for its format (docs/MODEL_FORMAT.md): missing or inconsistent metadata, wrong input or
output names, wrong shapes. Pulling in the `onnx` package (and protobuf) for that would be a large
dependency for a few fields, so this module walks the protobuf wire format itself: ModelProto field 14
(metadata_props), and in field 7 (the graph) the inputs (11), outputs (12) and initializer names (5),
skipping every other field by its length. It reads structure only; whether the graph runs is the
device's to find out (onnxruntime load and the start-up self-check, with rollback).

`check_model(data, source)` applies the same rules as edge/decide/detect.py (ModelMetadata.from_props
via `parse_props`, and OnnxDetector._check_io) and raises ModelError with the same wording.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from contract.errors import ModelError
from contract.model_format import FORMAT_VERSION, INPUT_NAME, OUTPUT_LAYOUT, OUTPUT_NAME, REQUIRED_KEYS

MAX_MODEL_BYTES = 64 * 1024 * 1024  # a LiftGuard detector is ~12 MB; anything far larger is not one of ours
# A model id the fleet rolls out becomes part of a file name on the unit: plain names only.
ROLLOUT_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class ParsedProps:
    """The metadata the device relies on, parsed and checked (edge ModelMetadata is built from it)."""

    model_id: str
    classes: tuple[str, ...]
    input_w: int
    input_h: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    version: str = ""
    trained_on: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)


def parse_props(props: dict[str, str], source: str) -> ParsedProps:
    """The device's metadata rules (shared by the device loader and the fleet registry)."""
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise ModelError(f"{source}: not a LiftGuard model, metadata lacks {missing}")
    if props["liftguard_format"] != FORMAT_VERSION:
        raise ModelError(f"{source}: model format {props['liftguard_format']!r}, device reads {FORMAT_VERSION!r}")
    if props["output_layout"] != OUTPUT_LAYOUT:
        raise ModelError(f"{source}: unsupported output layout {props['output_layout']!r}")
    try:
        classes = tuple(str(c) for c in json.loads(props["classes"]))
        w, h = (int(v) for v in json.loads(props["input_size"]))
        mean = tuple(float(v) for v in json.loads(props["mean"]))
        std = tuple(float(v) for v in json.loads(props["std"]))
        thresholds = {str(k): float(v) for k, v in json.loads(props.get("thresholds", "{}")).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{source}: unreadable metadata ({exc})") from None
    if not classes or len(mean) != 3 or len(std) != 3 or min(w, h) < 32 or any(s == 0 for s in std):
        raise ModelError(f"{source}: inconsistent metadata (classes/mean/std/input_size)")
    if not props["model_id"] or len(props["model_id"]) > 128:
        raise ModelError(f"{source}: model_id must be 1 to 128 characters")
    return ParsedProps(model_id=props["model_id"], classes=classes, input_w=w, input_h=h,
                       mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
                       version=props.get("version", ""), trained_on=props.get("trained_on", ""),
                       thresholds=thresholds)


@dataclass(frozen=True)
class OnnxHeader:
    props: dict[str, str]
    inputs: dict[str, tuple[Dim, ...]]  # graph inputs that are not initializers
    outputs: dict[str, tuple[Dim, ...]]


@dataclass(frozen=True)
class ModelFile:
    """A checked model file: what the registry records."""

    sha256: str
    size: int
    meta: ParsedProps
    props: dict[str, str]


# --- the protobuf wire format ----------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> list[tuple[int, int | memoryview]]:
    """(field number, value) of one message: ints for varints and fixed fields, views for LEN fields."""
    out: list[tuple[int, int | memoryview]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("field runs past the end of the file")
            out.append((number, buf[pos:pos + length]))
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ValueError("truncated fixed-size field")
            out.append((number, int.from_bytes(buf[pos:pos + size], "little")))
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise ValueError("expected a string field")
    return bytes(value).decode("utf-8")


def _sub(value: int | memoryview) -> memoryview:
    if not isinstance(value, memoryview):
        raise ValueError("expected a message field")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _value_info(buf: memoryview) -> tuple[str, tuple[Dim, ...]]:
    name, dims = "", []
    for number, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:  # TypeProto
            for t_num, t_val in _fields(_sub(value)):
                if t_num != 1:  # tensor_type
                    continue
                for tt_num, tt_val in _fields(_sub(t_val)):
                    if tt_num != 2:  # shape
                        continue
                    for s_num, s_val in _fields(_sub(tt_val)):
                        if s_num != 1:  # dim
                            continue
                        dim: Dim = None
                        for d_num, d_val in _fields(_sub(s_val)):
                            if d_num == 1 and isinstance(d_val, int):
                                dim = _signed(d_val)
                            elif d_num == 2:
                                dim = _text(d_val)
                        dims.append(dim)
    return name, tuple(dims)


def read_header(data: bytes, source: str = "model") -> OnnxHeader:
    """Metadata props and graph I/O of an ONNX file; ModelError when it is not a readable ONNX file."""
    try:
        props: dict[str, str] = {}
        inputs: dict[str, tuple[Dim, ...]] = {}
        outputs: dict[str, tuple[Dim, ...]] = {}
        initializers: set[str] = set()
        graph_seen = False
        for number, value in _fields(memoryview(data)):
            if number == 14:
                entry = {n: _text(v) for n, v in _fields(_sub(value)) if n in (1, 2)}
                props[entry.get(1, "")] = entry.get(2, "")
            elif number == 7:
                graph_seen = True
                for g_num, g_val in _fields(_sub(value)):
                    if g_num in (11, 12):
                        name, dims = _value_info(_sub(g_val))
                        (inputs if g_num == 11 else outputs)[name] = dims
                    elif g_num == 5:  # TensorProto: only its name (8)
                        initializers.update(_text(v) for n, v in _fields(_sub(g_val)) if n == 8)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{source}: not a readable ONNX file ({exc})") from None
    if not graph_seen:
        raise ModelError(f"{source}: not a readable ONNX file (no graph)")
    return OnnxHeader(props, {k: v for k, v in inputs.items() if k not in initializers}, outputs)


def check_model(data: bytes, source: str = "model") -> ModelFile:
    """Everything the device checks about a model file before running it (format, metadata, I/O)."""
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{source}: {len(data)} bytes; a model may be at most {MAX_MODEL_BYTES}")
    header = read_header(data, source)
    meta = parse_props(header.props, source)
    if not ROLLOUT_MODEL_ID.fullmatch(meta.model_id):
        raise ModelError(f"{source}: model_id {meta.model_id[:40]!r} is not a plain name (letters, digits, _.+-)")
    if list(header.inputs) != [INPUT_NAME]:
        raise ModelError(f"{source}: expected one input named {INPUT_NAME!r}")
    shape = header.inputs[INPUT_NAME]
    if len(shape) != 4 or shape[1] != 3 or (shape[2], shape[3]) != (meta.input_h, meta.input_w):
        raise ModelError(f"{source}: input shape {list(shape)} does not match metadata {meta.input_w}x{meta.input_h}")
    if OUTPUT_NAME not in header.outputs:
        raise ModelError(f"{source}: no output named {OUTPUT_NAME!r} (has {list(header.outputs)})")
    out_shape = header.outputs[OUTPUT_NAME]
    if len(out_shape) != 3 or out_shape[2] != 6:
        raise ModelError(f"{source}: output shape {list(out_shape)}, expected [1, K, 6]")
    return ModelFile(sha256=hashlib.sha256(data).hexdigest(), size=len(data), meta=meta, props=header.props)
