"""Relay, voice and fire input as gpiozero MockPin timelines — including the failure paths."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge.act.gpio import GpioActuators
from edge.config import ActuatorConfig, parse_config
from edge.decide.detect import OnnxDetector
from edge.run.session import run_service
from edge.see.capture import Camera, FolderReader
from tests.support.onnx_models import constant_model

REPO = Path(__file__).resolve().parents[2]


def levels(factory: MockFactory, pin: str, idle: bool = False) -> list[bool]:
    """The pin's level history from its first idle (de-energised) level, consecutive repeats folded.

    Before its device is created a mock pin may sit at the other level; that is not a relay state."""
    out: list[bool] = []
    for s in factory.pin(pin).states:
        level = bool(s.state)
        if (out or level == idle) and (not out or out[-1] != level):
            out.append(level)
    return out


def test_an_explicit_pin_factory_drives_the_pins_and_leaves_gpiozeros_default_alone() -> None:
    from gpiozero import Device

    default_before = Device.pin_factory
    own = MockFactory()
    a = GpioActuators(ActuatorConfig(voice={"mode": "none"}, fire_pin="GPIO27", fire_active_high=True),
                      pin_factory=own)
    a.set_hold(True)
    own.pin("GPIO27").drive_high()  # the fire-service input, on the same explicit factory
    assert not a.held
    a.close()
    assert levels(own, "GPIO17") == [False, True, False]
    assert Device.pin_factory is default_before


@pytest.mark.parametrize(("active_high", "idle", "held"), [(True, False, True), (False, True, False)])
def test_relay_levels_follow_the_configured_active_level(mock_pins: MockFactory, active_high: bool, idle: bool,
                                                         held: bool) -> None:
    a = GpioActuators(ActuatorConfig(relay_active_high=active_high, voice={"mode": "none"}))
    a.set_hold(True)
    assert mock_pins.pin("GPIO17").state is held
    a.close()
    assert levels(mock_pins, "GPIO17", idle) == [idle, held, idle]


def test_fire_input_cuts_the_relay_from_its_own_edge(mock_pins: MockFactory) -> None:
    seen: list[bool] = []
    a = GpioActuators(ActuatorConfig(fire_pin="GPIO27", fire_active_high=True, voice={"mode": "gpio", "pin": "GPIO22"}),
                      on_fire=seen.append)
    a.set_hold(True)
    a.set_alarm(True)
    started = time.monotonic()
    mock_pins.pin("GPIO27").drive_high()
    released_after = time.monotonic() - started
    assert mock_pins.pin("GPIO17").state is False
    assert mock_pins.pin("GPIO22").state is False
    assert released_after < 0.1
    assert seen == [True]
    a.set_hold(True)  # a hold request while the fire input is active is refused
    assert mock_pins.pin("GPIO17").state is False
    a.close()


def test_close_releases_everything_and_is_idempotent(mock_pins: MockFactory) -> None:
    a = GpioActuators(ActuatorConfig(beacon_pin="GPIO5", voice={"mode": "gpio", "pin": "GPIO22"}))
    a.set_hold(True)
    a.set_alarm(True)
    a.close()
    a.close()
    assert levels(mock_pins, "GPIO17") == [False, True, False]
    assert levels(mock_pins, "GPIO22") == [False, True, False]
    assert levels(mock_pins, "GPIO5") == [False, True, False]


class ExplodingDetector(OnnxDetector):
    """The real detector that raises after `after` frames: an unexpected failure mid-hold."""

    def __init__(self, path: Path, after: int) -> None:
        super().__init__(path)
        self.after = after

    def detect(self, frame):  # type: ignore[no-untyped-def]
        self.after -= 1
        if self.after < 0:
            raise RuntimeError("inference crashed")
        return super().detect(frame)


def frames_folder(tmp_path: Path, n: int) -> Path:
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), rng.integers(0, 255, (480, 640, 3), np.uint8))
    return folder


def test_an_exception_in_the_loop_releases_the_door(mock_pins: MockFactory, tmp_path: Path) -> None:
    model = constant_model(tmp_path / "ebike.onnx", [[60, 40, 200, 220, 0.95, 0]])
    cfg = parse_config({"camera": {"source": str(frames_folder(tmp_path, 12)), "fps": 60},
                        "events": {"jsonl_path": str(tmp_path / "ev.jsonl"), "snapshot_dir": ""},
                        "actuators": {"voice": {"mode": "none"}}})
    camera = Camera(cfg.camera, opener=lambda: FolderReader(Path(cfg.camera.source)))
    with pytest.raises(RuntimeError, match="inference crashed"):
        run_service(cfg, threading.Event(), detector=ExplodingDetector(model, after=8), camera=camera)
    assert levels(mock_pins, "GPIO17") == [False, True, False]


SIGTERM_SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory
    Device.pin_factory = factory = MockFactory()
    from edge.see.capture import Camera, FolderReader
    from edge.config import parse_config
    from edge.decide.detect import OnnxDetector
    from edge.run.session import run_service

    def report():
        print("LEVELS", [bool(s.state) for s in factory.pin("GPIO17").states], flush=True)
    atexit.register(report)

    model, folder = sys.argv[1], sys.argv[2]
    cfg = parse_config({"camera": {"source": folder, "fps": 60},
                        "events": {"jsonl_path": "", "snapshot_dir": ""},
                        "actuators": {"voice": {"mode": "none"}}})
    class Slow(OnnxDetector):
        def detect(self, frame):
            if factory.pin("GPIO17").state:
                print("HELD", flush=True)
            time.sleep(0.05)
            return super().detect(frame)
    cam = Camera(cfg.camera, opener=lambda: FolderReader(Path(folder)))
    run_service(cfg, threading.Event(), detector=Slow(model), camera=cam)
""")


def test_sigterm_releases_the_door(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "ebike.onnx", [[60, 40, 200, 220, 0.95, 0]])
    folder = frames_folder(tmp_path, 200)
    script = tmp_path / "device.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(model), str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("HELD"):
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=20) == 0, out[-3000:]
    levels_line = next(line for line in out.splitlines() if line.startswith("LEVELS"))
    states = ast.literal_eval(levels_line.removeprefix("LEVELS "))
    assert True in states and states[-1] is False
