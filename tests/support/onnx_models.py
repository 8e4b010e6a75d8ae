"""Hand-built ONNX files in the LiftGuard model format, for tests that need exact detector outputs
or deliberately broken models. The shipped model is tested separately, for real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["ebike", "bicycle", "wheelchair", "stroller", "person", "cart"]


def metadata(**overrides: str) -> dict[str, str]:
    props = {
        "liftguard_format": "1",
        "model_id": "test-constant",
        "classes": json.dumps(CLASSES),
        "input_size": json.dumps([320, 256]),
        "mean": json.dumps([0.5, 0.5, 0.5]),
        "std": json.dumps([0.5, 0.5, 0.5]),
        "output_layout": "xyxy_score_class",
        "version": "0.0.0",
    }
    props.update(overrides)
    return {k: v for k, v in props.items() if v != "<drop>"}


def constant_model(path: Path, rows: list[list[float]], *, input_hw: tuple[int, int] = (256, 320),
                   props: dict[str, str] | None = None, output_name: str = "detections") -> Path:
    """A model whose `detections` output is always `rows` (x1,y1,x2,y2,score,class in input pixels)."""
    table = np.zeros((1, max(len(rows), 1), 6), np.float32)
    if rows:
        table[0, : len(rows)] = np.array(rows, np.float32)
    h, w = input_hw
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["table", "z"], [output_name]),
        ],
        name="constant",
        inputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(table.shape))],
        initializer=[numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.float32(0), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (props if props is not None else metadata()).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def brightness_model(path: Path, box: list[float], cls: int = 0, input_hw: tuple[int, int] = (256, 320),
                     model_id: str = "test-brightness") -> Path:
    """A model that 'sees' class `cls` at `box` with score = the frame's mean brightness (0..1).

    Bright frames = object present, dark frames = absent: a scriptable detector for pipeline tests."""
    h, w = input_hw
    const_box = np.array(box, np.float32).reshape(1, 1, 4)
    const_cls = np.array([[[cls]]], np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1),  # [1,1,1,1], normalised -1..1
            helper.make_node("Add", ["m", "one"], ["m1"]),
            helper.make_node("Mul", ["m1", "half"], ["score4"]),
            helper.make_node("Reshape", ["score4", "shape"], ["score"]),
            helper.make_node("Concat", ["box", "score", "cls"], ["detections"], axis=2),
        ],
        name="brightness",
        inputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        outputs=[helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 1, 6])],
        initializer=[
            numpy_helper.from_array(const_box, "box"),
            numpy_helper.from_array(const_cls, "cls"),
            numpy_helper.from_array(np.float32(1.0), "one"),
            numpy_helper.from_array(np.float32(0.5), "half"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata(model_id=model_id).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path
