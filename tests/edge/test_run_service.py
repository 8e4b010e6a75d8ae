"""`liftguard run` as systemd runs it: a real process, a fake NOTIFY_SOCKET, mock pins by env."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from tests.support.onnx_models import brightness_model

REPO = Path(__file__).resolve().parents[2]


def test_run_notifies_ready_then_watchdog_and_releases_on_the_way_out(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):  # sensor noise, so a slow run never looks like a frozen camera
        level = 245 if 20 <= i < 120 else 5
        image = np.full((480, 640, 3), level, np.uint8) + rng.integers(0, 10, (480, 640, 3), np.uint8)
        cv2.imwrite(str(frames / f"{i:04d}.png"), image)
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    events = tmp_path / "events.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "unit": {"id": "car-7"},
        "camera": {"source": str(frames), "fps": 30},
        "detector": {"model_path": str(model)},
        "actuators": {"voice": {"mode": "none"}},
        "events": {"jsonl_path": str(events), "snapshot_dir": str(tmp_path / "snaps")},
    }))
    notify_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(notify_path))
    server.settimeout(0.5)
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "NOTIFY_SOCKET": str(notify_path),
           "WATCHDOG_USEC": "20000", "PYTHONPATH": str(REPO)}
    messages: list[str] = []
    done = threading.Event()

    def listen() -> None:  # like systemd: read datagrams while the service runs
        while not done.is_set():
            try:
                messages.append(server.recv(4096).decode())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "edge.run.cli", "run", "--config", str(config)], env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        time.sleep(0.6)
        done.set()
        listener.join()
        server.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = [m.splitlines()[0] for m in messages]
    assert kinds[0] == "READY=1"
    assert "WATCHDOG=1" in kinds
    assert kinds[-1] == "STOPPING=1"
    assert any(line.startswith("STATUS=watching:") for m in messages for line in m.splitlines())
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    phases = [(e["type"], e["phase"]) for e in logged]
    assert phases == [("ebike_blocked", "start"), ("ebike_blocked", "end")]
    assert logged[-1]["detail"] == "released: service stopping"
    assert list((tmp_path / "snaps").glob("*.jpg")), "the start event's snapshot is kept on disk"
    assert "e-bike confirmed (track" in proc.stderr
