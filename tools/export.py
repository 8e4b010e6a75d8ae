"""Export a training run to the LiftGuard ONNX format (docs/MODEL_FORMAT.md, v1).

    python -m tools.export --run /work/runs/v2 --out models/liftguard-det.onnx

Decoding (3×3 max-pool peaks, TopK 50 over all classes, boxes in input pixels) is inside the graph,
so the device only un-letterboxes, thresholds and runs NMS.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from contract import model_format
from tools.model import CLASSES, INPUT_H, INPUT_W, MEAN, STD, LiftGuardDetector

log = logging.getLogger("tools.export")
OPSET = 17


def load_run(run: Path) -> tuple[LiftGuardDetector, dict[str, Any]]:
    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    model = LiftGuardDetector(len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), ckpt


def metadata(ckpt: Mapping[str, Any]) -> dict[str, str]:
    version = str(ckpt.get("version", "0.1.0"))
    props = {
        "liftguard_format": model_format.FORMAT_VERSION,
        "model_id": f"liftguard-det-{version}",
        "classes": json.dumps(list(ckpt.get("classes", CLASSES))),
        "input_size": json.dumps([INPUT_W, INPUT_H]),
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "output_layout": model_format.OUTPUT_LAYOUT,
        "letterbox": model_format.LETTERBOX,
        "version": version,
        "trained_on": str(ckpt.get("trained_on", "")),
    }
    if ckpt.get("thresholds"):
        props["thresholds"] = json.dumps({k: round(float(v), 3) for k, v in ckpt["thresholds"].items()})
    return props


def export_model(model: LiftGuardDetector, out: Path, props: Mapping[str, str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_H, INPUT_W)
    # The TorchScript exporter gives a plain, static graph that onnxruntime fuses well.
    torch.onnx.export(model, (dummy,), str(out), input_names=[model_format.INPUT_NAME],
                      output_names=[model_format.OUTPUT_NAME],
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def max_abs_diff(model: LiftGuardDetector, onnx_path: Path, seed: int = 0) -> float:
    """PyTorch vs onnxruntime on one random input; scores and coordinates must agree."""
    import onnxruntime as ort

    x = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (1, 3, INPUT_H, INPUT_W)).astype(np.float32))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["detections"], {"images": x.numpy()})[0]
    return float(np.abs(ref - got).max())


class _CalibrationReader:
    """Feeds letterboxed images to onnxruntime's static quantizer (activation ranges)."""

    def __init__(self, images: Sequence[Path]) -> None:
        self._items = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        from tools.augment import letterbox, normalise
        from tools.features import read_rgb

        path = next(self._items, None)
        if path is None:
            return None
        img, _ = letterbox(read_rgb(path))
        return {"images": normalise(img)[None]}


def quantize_int8(src: Path, dst: Path, calibration: Sequence[Path]) -> None:
    """Static INT8 (QDQ, per-channel weights) calibrated on real images; its accuracy is measured
    separately with `liftguard eval` before it may ship."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    reader = _CalibrationReader(calibration)
    # The decode tail (TopK/Gather/exp) stays float: only the backbone and head convs are quantised.
    nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    pre.unlink(missing_ok=True)
    proto = onnx.load(str(dst))
    src_props = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    del proto.metadata_props[:]
    for k, v in src_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, (v + "-int8" if k == "model_id" else v)
    onnx.save(proto, str(dst))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="training run directory holding model.pt")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    ap.add_argument("--version", default=None, help="override the version recorded in the run")
    ap.add_argument("--int8", type=Path, default=None, help="also write a static-INT8 variant here")
    ap.add_argument("--calib", type=Path, default=None, help="folder of calibration images for --int8")
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--threshold", action="append", default=[], metavar="CLASS=SCORE",
                    help="override a suggested operating point recorded in the model (repeatable), e.g. an "
                         "e-bike threshold chosen for a different false-block budget")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model, ckpt = load_run(args.run)
    if args.version:
        ckpt["version"] = args.version
    for item in args.threshold:
        name, _, value = item.partition("=")
        if name not in ckpt.get("classes", CLASSES) or not 0.0 < float(value or "nan") <= 1.0:
            ap.error(f"--threshold {item!r}: expected CLASS=SCORE with a known class and 0 < SCORE <= 1")
        ckpt["thresholds"] = {**ckpt.get("thresholds", {}), name: float(value)}
    props = metadata(ckpt)
    export_model(model, args.out, props)
    diff = max_abs_diff(model, args.out)
    log.info("wrote %s (%s); PyTorch vs onnxruntime max |diff| %.2e", args.out, props["model_id"], diff)
    if args.int8:
        if args.calib is None:
            ap.error("--int8 needs --calib")
        files = sorted(p for p in args.calib.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        step = max(1, len(files) // args.calib_n)
        quantize_int8(args.out, args.int8, files[::step][: args.calib_n])
        log.info("wrote INT8 variant %s", args.int8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
