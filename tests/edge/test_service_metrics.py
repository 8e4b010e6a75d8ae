"""The service counts what the fleet sends it and it refuses, in the one metrics registry (health.Metrics)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from edge.config import parse_config
from edge.report.health import Health, Notifier
from edge.run.session import run_service
from edge.see.capture import Camera
from tests.edge.link_support import FleetSubscriber, new_command
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import brightness_model


class DarkLiveCamera:
    """An endless live source of dark frames (nothing detected); paced so the loop does not spin."""

    ended = False
    live = True

    def read(self) -> np.ndarray:
        time.sleep(0.02)
        return np.full((120, 160, 3), 5, np.uint8)

    def close(self) -> None:
        pass


def test_a_rejected_fleet_command_is_counted_in_the_services_metrics(mosquitto: MosquittoBroker,
                                                                    tmp_path: Path) -> None:
    unit = "car-metrics"
    cfg = parse_config({
        "unit": {"id": unit},
        "detector": {"model_path": str(brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220]))},
        "actuators": {"backend": "none", "voice": {"mode": "none"}},
        "mqtt": {"url": mosquitto.url, "outbox_path": str(tmp_path / "outbox.db"), "reconnect_max_s": 1},
    })
    fleet = FleetSubscriber(mosquitto, [f"liftguard/v1/units/{unit}/#"], client_id="fleet-metrics")
    health = Health(Notifier(socket_path=""))
    stop = threading.Event()
    seen: dict[str, object] = {}

    def fleet_side() -> None:  # the service needs the main thread (signal handlers); the fleet acts from here
        try:
            seen["online"] = fleet.wait_for(lambda f: b'"online"' in b"".join(f.payloads("/status")), timeout=30)
            fleet.client.publish(f"liftguard/v1/units/{unit}/cmd/disable", b"not json", qos=1)
            fleet.client.publish(f"liftguard/v1/units/{unit}/cmd/enable", new_command(), qos=1)
            seen["answered"] = fleet.wait_for(lambda f: len(f.payloads("/cmd_result")) == 2, timeout=30)
            deadline = time.monotonic() + 30
            while health.metrics.counter("mqtt_commands_rejected") < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()

    driver = threading.Thread(target=fleet_side)
    driver.start()
    try:
        assert run_service(cfg, stop, camera=Camera(cfg.camera, opener=DarkLiveCamera), health=health) == 0
    finally:
        stop.set()
        driver.join(timeout=120)
        fleet.close()
    assert seen == {"online": True, "answered": True}
    results = sorted((json.loads(p)["command"], json.loads(p)["ok"]) for p in fleet.payloads("/cmd_result"))
    assert results == [("disable", False), ("enable", True)]
    assert health.metrics.counter("mqtt_commands_rejected") == 1
