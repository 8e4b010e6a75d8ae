"""Shadow models (issue 17): a candidate decides beside the active model and never actuates."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from contract.errors import PayloadError
from contract.mqtt import EventPayload, decode
from edge.config import parse_config
from edge.decide.detect import OnnxDetector
from edge.decide.policy import Conditions
from edge.decide.shadow import ShadowRunner
from edge.run.cli import ASSETS, main
from edge.run.session import DemoOptions, run_demo, start_shadow
from tests.support.onnx_models import brightness_model

EBIKE, PERSON = 0, 4
CONFIG = ("unit: {id: shadow-test}\n"
          "actuators: {backend: gpio, relay_pin: GPIO17, voice: {mode: gpio, pin: GPIO22}}\n"
          "events: {jsonl_path: '', snapshot_dir: ''}\npolicy: {clear_after_s: 2.0}\n"
          "models: {shadow_every: 2}\n")


def write_clip(folder: Path, pattern: str) -> Path:
    """One frame per character: '#' bright (object present), '.' dark (absent)."""
    folder.mkdir()
    for i, c in enumerate(pattern):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((480, 640, 3), 250 if c == "#" else 5, np.uint8))
    return folder


def pin_states(pins: MockFactory) -> dict[str, list[bool]]:
    """Each output pin's sequence of states (times left out: they are the host's, not the clip's)."""
    return {str(pin.info.name): [bool(s.state) for s in pin.states] for pin in pins.pins.values()}


def replay(tmp_path: Path, name: str, model: Path, shadow: Path | None) -> tuple[dict[str, list[bool]], list[dict]]:
    clip = tmp_path / "clip"
    if not clip.exists():
        write_clip(clip, "." * 10 + "#" * 30 + "." * 40)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    pins = MockFactory()
    out = tmp_path / f"{name}.jsonl"
    code = run_demo(DemoOptions(clip=clip, events_out=out, snapshot_out=None, model=str(model), mqtt_url=None,
                                config_path=str(config), fps=10, title="replay", require_block=False,
                                shadow_model=str(shadow) if shadow else None, pin_factory=pins))
    assert code == 0
    return pin_states(pins), [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize(("active_cls", "shadow_cls"), [(PERSON, EBIKE), (EBIKE, PERSON), (EBIKE, EBIKE)],
                         ids=["shadow-would-hold", "shadow-would-not", "both-hold"])
def test_a_shadow_model_never_changes_the_pins(tmp_path: Path, active_cls: int, shadow_cls: int) -> None:
    active = brightness_model(tmp_path / "active.onnx", [40, 40, 200, 220], cls=active_cls, model_id="active-1")
    shadow = brightness_model(tmp_path / "cand.onnx", [40, 40, 200, 220], cls=shadow_cls, model_id="cand-2")
    pins_alone, events_alone = replay(tmp_path, "alone", active, None)
    pins_shadowed, events_shadowed = replay(tmp_path, "shadowed", active, shadow)
    assert pins_shadowed == pins_alone  # relay and voice pins: the same sequence with or without the shadow
    assert any(len(states) > 1 for states in pins_alone.values()) == (active_cls == EBIKE)
    real = [(e["type"], e["phase"], e["ts"]) for e in events_shadowed if e["type"] != "shadow_decision"]
    assert real == [(e["type"], e["phase"], e["ts"]) for e in events_alone]
    assert not [e for e in events_alone if e["type"] == "shadow_decision"]
    shadow_events = [e for e in events_shadowed if e["type"] == "shadow_decision"]
    if shadow_cls != EBIKE:
        assert shadow_events == []
        return
    assert [e["would"] for e in shadow_events] == ["hold", "release"]
    assert {e["model_id"] for e in shadow_events} == {"cand-2"}
    # agreement: the active model's relay at the same instant
    assert [e["agrees"] for e in shadow_events] == ([True, True] if active_cls == EBIKE else [False, True])
    for e in shadow_events:
        decode(EventPayload, json.dumps(e).encode())  # what the fleet will parse


def test_replay_of_the_demo_clip_writes_shadow_decisions(tmp_path: Path) -> None:
    """The issue's done-when: the shipped model as its own shadow agrees with itself."""
    out = tmp_path / "F.jsonl"
    model = Path(__file__).resolve().parents[2] / "models" / "liftguard-det.onnx"
    assert main(["replay", str(ASSETS / "demo_clip.mp4"), "--shadow-model", str(model),
                 "--events-out", str(out)]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    shadow = [e for e in events if e["type"] == "shadow_decision"]
    assert [e["would"] for e in shadow] == ["hold", "release"]
    assert all(e["agrees"] for e in shadow)


def test_the_shadow_is_skipped_when_the_frame_budget_is_spent(tmp_path: Path) -> None:
    cfg = parse_config({"models": {"shadow_every": 1}})
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    runner = ShadowRunner(OnnxDetector(model), cfg, budget_ms=100.0)
    assert runner.stats.last_ms > 0  # timed once at start: the first check already knows the cost
    runner.stats.last_ms = 5.0
    assert runner.due(spent_ms=10.0)
    runner.stats.last_ms = 50.0
    assert runner.due(spent_ms=40.0)
    assert not runner.due(spent_ms=60.0)  # 60 + 50 > 100: the frame's budget would be overrun
    assert runner.stats.skipped_budget == 1
    every_third = ShadowRunner(OnnxDetector(model), parse_config({"models": {"shadow_every": 3}}))
    assert [every_third.due(0.0) for _ in range(6)] == [False, False, True, False, False, True]


def test_a_failing_shadow_is_switched_off_and_says_nothing(tmp_path: Path) -> None:
    cfg = parse_config({})
    runner = ShadowRunner(OnnxDetector(brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])), cfg)

    def broken(_image: object) -> list[object]:
        raise RuntimeError("inference failed")

    runner.detector.detect = broken  # type: ignore[method-assign]
    frame = np.zeros((480, 640, 3), np.uint8)
    assert runner.observe(0.0, frame, (640, 480), Conditions(), active_holding=False) == []
    assert not runner.enabled and runner.stats.errors == 1
    assert not runner.due(0.0)


def test_a_configured_shadow_that_cannot_load_leaves_the_unit_running(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "cand.onnx"
    bad.write_bytes(b"not an onnx file")
    cfg = parse_config({"models": {"dir": str(tmp_path), "shadow": "cand.onnx"}})
    assert start_shadow(cfg) is None
    assert "shadow model not started" in caplog.text


def test_shadow_event_fields_are_bounded() -> None:
    base = {"incident_id": "i" * 8, "unit_id": "u1", "type": "shadow_decision", "phase": "start", "ts": 1.0}
    decode(EventPayload, json.dumps(base | {"would": "hold", "model_id": "m", "agrees": False}).encode())
    with pytest.raises(PayloadError, match="would"):
        decode(EventPayload, json.dumps(base | {"would": "open the door"}).encode())
    with pytest.raises(PayloadError, match="model_id"):
        decode(EventPayload, json.dumps(base | {"model_id": "m" * 129}).encode())


def test_selftest_checks_the_rolled_out_active_model(tmp_path: Path) -> None:
    from edge.report.model_update import ModelState, Slot
    from edge.run.selftest import default_detector

    rolled = brightness_model(tmp_path / "rolled.onnx", [40, 40, 200, 220], model_id="rolled-5")
    cfg = parse_config({"models": {"dir": str(tmp_path)}})
    assert default_detector(cfg).metadata.model_id != "rolled-5"  # type: ignore[attr-defined]
    ModelState(active=Slot("rolled-5", str(rolled))).save(tmp_path)
    assert default_detector(cfg).metadata.model_id == "rolled-5"  # type: ignore[attr-defined]


def test_heartbeats_carry_the_shadows_frames_run_and_skipped_for_the_budget(tmp_path: Path) -> None:
    from edge.act.unwired import LogActuators
    from edge.report.events import FanOut
    from edge.run.app import Pipeline
    from edge.see.capture import Frame

    cfg = parse_config({"models": {"shadow_every": 1}})
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    pipeline = Pipeline(cfg, OnnxDetector(model), LogActuators(), FanOut([]))
    try:
        beat = pipeline.heartbeat("online")
        assert (beat.shadow_model_id, beat.shadow_runs, beat.shadow_skipped_budget) == (None, 0, 0)
        pipeline.shadow = ShadowRunner(OnnxDetector(model), cfg, budget_ms=1e6)
        image = np.full((240, 320, 3), 200, np.uint8)
        for i in range(3):
            pipeline.process(Frame(i, pipeline.clock(), image))
        pipeline.shadow.budget_ms = 0.0  # from now on no frame has room for the candidate
        for i in range(3, 5):
            pipeline.process(Frame(i, pipeline.clock(), image))
        beat = pipeline.heartbeat("online")
        assert (beat.shadow_model_id, beat.shadow_runs, beat.shadow_skipped_budget) == ("test-brightness", 3, 2)
    finally:
        pipeline.close()
