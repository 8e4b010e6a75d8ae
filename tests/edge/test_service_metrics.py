"""The service counts what the fleet sends it and it refuses, in the one metrics registry (health.Metrics)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from edge.act.unwired import LogActuators
from edge.config import parse_config
from edge.decide.detect import OnnxDetector
from edge.report.events import MemorySink
from edge.report.health import Health, Notifier
from edge.run.app import ClipClock, Pipeline
from edge.run.session import run_service
from edge.see.capture import Camera, Frame
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


def test_the_pipeline_reports_into_the_registry_the_heartbeat_and_the_status_line_read(tmp_path: Path) -> None:
    """One owner of the device's counters and timings: the pipeline writes health's Metrics, and the
    heartbeat, the systemd status line and the skip counters all read that one registry."""
    cfg = parse_config({"actuators": {"backend": "none", "voice": {"mode": "none"}}})
    detector = OnnxDetector(brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220]))
    health = Health(Notifier(socket_path=""))
    clock = ClipClock()
    pipeline = Pipeline(cfg, detector, LogActuators(), MemorySink(), clock=clock, t0=0.0, metrics=health.metrics)
    pipeline.progress_listeners.append(health.frame_processed)
    for name in ("camera", "model", "pins"):
        health.component_up(name)
    health.set_camera("online")
    dark = np.full((120, 160, 3), 5, np.uint8)
    for i in range(6):
        clock.now = i / 10
        pipeline.process(Frame(i, i / 10, dark))
    pipeline.process(Frame(6, clock.now, dark, repeat=True))  # a frozen camera's frame: skipped, counted
    clock.now = 5.0
    pipeline.process(Frame(7, 1.0, dark))  # four seconds late: stale, skipped, counted

    metrics = health.metrics
    assert metrics.counter("frames_processed") == 6
    assert (metrics.counter("frames_skipped_repeated"), metrics.counter("frames_skipped_stale")) == (1, 1)
    assert len(metrics.window("inference_ms")) == len(metrics.window("pipeline_ms")) == 6
    p50, p95 = metrics.inference_percentiles()
    assert 0 < p50 <= p95
    beat = pipeline.heartbeat("online")
    assert (beat.inference_p50_ms, beat.inference_p95_ms) == (round(p50, 2), round(p95, 2))
    assert beat.fps == round(min(6 / max(beat.uptime_s, 1e-3), 1000.0), 2)  # frames over the registry's uptime
    assert beat.uptime_s <= metrics.uptime_s()
    assert f"inference {p50:.0f} ms" in health.status_line()
