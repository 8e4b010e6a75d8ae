"""Per-frame device time on the bundled clip: capture (decode) → detect → track → decide → actuate.

Prints median/p95 per frame and the process's peak RSS; writes benchmarks/results/bench_pipeline.json.
Run: .venv/bin/python -m benchmarks.bench_pipeline [--clip FILE] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import cv2
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from benchmarks.common import summary, write_result
from edge.config import parse_config
from edge.report.events import MemorySink
from edge.run.app import ClipClock, Pipeline
from edge.run.cli import DEMO_CLIP
from edge.run.session import DEMO_CONFIG, build_actuators, build_detector
from edge.see.capture import Frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", type=Path, default=DEMO_CLIP)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the clip")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)

    Device.pin_factory = MockFactory()
    cfg = parse_config(DEMO_CONFIG)
    detector = build_detector(cfg, args.model)
    clock = ClipClock()
    pipeline = Pipeline(cfg, detector, build_actuators(cfg), MemorySink(), clock=clock, t0=0.0)
    per_frame: list[float] = []
    capture: list[float] = []
    inference: list[float] = []
    index = 0
    for _ in range(args.repeat):
        cap = cv2.VideoCapture(str(args.clip))
        fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
        while True:
            started = time.perf_counter()
            ok, image = cap.read()
            if not ok:
                break
            decoded = time.perf_counter()
            clock.now = index / fps
            pipeline.process(Frame(index, index / fps, image))
            done = time.perf_counter()
            per_frame.append((done - started) * 1000)
            capture.append((decoded - started) * 1000)
            inference.append(pipeline.metrics.window("inference_ms")[-1])
            index += 1
        cap.release()
    pipeline.close()
    warm = per_frame[5:]  # the first frames pay for onnxruntime's lazy initialisation
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "clip": args.clip.name, "frames": len(per_frame), "model": detector.metadata.model_id,
        "threads": cfg.detector.threads, "per_frame_ms": summary(warm), "capture_ms": summary(capture[5:]),
        "detect_ms": summary(inference[5:]), "peak_rss_mb": round(peak_rss_mb, 1),
        "targets": {"per_frame_median_ms": 25, "peak_rss_mb": 250},
    }
    pf = result["per_frame_ms"]
    print(f"{len(per_frame)} frames of {args.clip.name}: per frame median {pf['median']:.1f} ms, "
          f"p95 {pf['p95']:.1f} ms (detect median {result['detect_ms']['median']:.1f} ms, "
          f"capture median {result['capture_ms']['median']:.1f} ms); peak RSS {peak_rss_mb:.0f} MB")
    write_result("bench_pipeline", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
