"""`liftguard selftest`: each check against a seam (frames, detector, pins, aplay, a real broker)."""

from __future__ import annotations

import datetime as dt
import io
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from edge.config import Config, parse_config
from edge.run import selftest as st
from edge.run.selftest import CheckResult, SelfTest, compare_views, selftest_main

UTC = dt.UTC


def scene(seed: int = 1, w: int = 800, h: int = 600) -> np.ndarray:
    """A synthetic elevator-car-ish view with plenty of edges."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, 160)), y + int(rng.integers(20, 160))), colour, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def view(img: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    return img[40 + dy:40 + dy + 480, 60 + dx:60 + dx + 640].copy()


class FakeDetector:
    def __init__(self, ms: float) -> None:
        self.ms = ms
        self.calls = 0

    def detect(self, frame: Any) -> list[object]:
        self.calls += 1
        time.sleep(self.ms / 1000)
        return []


def config(**sections: Any) -> Config:
    base: dict[str, Any] = {"unit": {"id": "unit-7"}, "camera": {"source": "fake"},
                            "actuators": {"backend": "none", "voice": {"mode": "none"}}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return parse_config(base)


def by_name(results: Sequence[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def selftest(cfg: Config, tmp_path: Path, frame: np.ndarray | None = None, **kwargs: Any) -> SelfTest:
    kwargs.setdefault("detector_factory", lambda c: FakeDetector(1))
    kwargs.setdefault("now", lambda: dt.datetime(2026, 5, 1, tzinfo=UTC))
    return SelfTest(cfg, tmp_path / "config.yaml", grab=lambda source: frame, latency_runs=5, **kwargs)


# --- camera view ------------------------------------------------------------------------------------


def test_same_view_with_sensor_noise_matches_the_reference() -> None:
    ref = view(scene())
    noisy = np.clip(ref.astype(int) + np.random.default_rng(0).normal(0, 4, ref.shape), 0, 255).astype(np.uint8)
    cmp = compare_views(ref, noisy)
    assert cmp.problems() == []
    assert cmp.shift < 0.01 and cmp.similarity > 0.8


def test_a_camera_turned_by_ten_percent_is_caught_and_the_shift_measured() -> None:
    cmp = compare_views(view(scene()), view(scene(), dx=64, dy=20))
    assert cmp.shift_x == pytest.approx(0.10, abs=0.01)
    assert cmp.shift_y == pytest.approx(20 / 480, abs=0.01)
    assert any("view moved" in p for p in cmp.problems())


def test_a_covered_lens_is_caught() -> None:
    assert any("almost uniform" in p for p in compare_views(view(scene()), np.full((480, 640, 3), 12, np.uint8))
               .problems())


def test_a_different_view_is_caught() -> None:
    assert any("looks different" in p for p in compare_views(view(scene(1)), view(scene(2))).problems())


def test_view_check_uses_the_reference_png(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "reference.png"), view(scene()))
    ok = by_name(selftest(config(), tmp_path, frame=view(scene())).check_camera())
    moved = by_name(selftest(config(), tmp_path, frame=view(scene(), dx=80)).check_camera())
    assert (ok["camera"].status, ok["view"].status) == ("PASS", "PASS")
    assert moved["view"].status == "FAIL" and "knocked or turned" in moved["view"].detail


def test_no_frame_fails_camera_and_skips_view(tmp_path: Path) -> None:
    results = by_name(selftest(config(), tmp_path, frame=None).check_camera())
    assert results["camera"].status == "FAIL" and results["view"].status == "SKIP"


# --- model --------------------------------------------------------------------------------------------


def test_model_latency_is_measured_against_the_budget(tmp_path: Path) -> None:
    detector = FakeDetector(2)
    result = selftest(config(detector={"budget_ms": 50}), tmp_path, detector_factory=lambda c: detector).check_model()
    assert result.status == "PASS"
    # the fake sleeps 2 ms per call; a loaded CI machine may add a little, never 48 ms
    assert re.search(r"p50 \d+(\.\d+)? ms", result.detail) and "budget 50 ms" in result.detail
    assert detector.calls == 3 + 5  # warm-up + timed runs


def test_a_model_slower_than_the_budget_fails(tmp_path: Path) -> None:
    result = selftest(config(detector={"budget_ms": 10}), tmp_path,
                      detector_factory=lambda c: FakeDetector(15)).check_model()
    assert result.status == "FAIL" and "too slow" in result.detail


def test_a_missing_model_file_fails_with_its_path(tmp_path: Path) -> None:
    cfg = config(detector={"model_path": str(tmp_path / "nope.onnx")})
    result = SelfTest(cfg, tmp_path / "c.yaml").check_model()  # the real edge.decide.detect.OnnxDetector
    assert result.status == "FAIL" and "nope.onnx" in result.detail


# --- relay, door loopback, fire input -----------------------------------------------------------------


GPIO = {"backend": "gpio", "relay_pin": "GPIO17", "relay_active_high": False, "door_pin": "GPIO22",
        "fire_pin": "GPIO27", "fire_active_high": False, "voice": {"mode": "none"}}


def test_relay_click_is_confirmed_by_the_door_input_loopback(mock_pins: MockFactory, tmp_path: Path) -> None:
    """Low-trigger relay in parallel with the door-open button: energised (pin low) -> door contact low."""
    door = mock_pins.pin(22)
    relay = mock_pins.pin(17, pin_class=MockConnectedPin, input_pin=door)
    mock_pins.pin(27).drive_high()  # fire service inactive (active low)
    results = by_name(selftest(config(actuators=GPIO), tmp_path).check_io())
    assert results["relay"].status == "PASS", results["relay"].detail
    assert "door input opened after" in results["relay"].detail
    assert results["fire"].status == "PASS"
    states = [s.state for s in relay.states]
    assert states[-3:] == [True, False, True], "released (high) -> held (low) -> released (high)"
    held_for = relay.states[-1].timestamp - relay.states[-2].timestamp
    assert st.RELAY_PULSE_S - 0.05 <= held_for <= st.RELAY_PULSE_S + 0.3


def test_relay_click_without_the_door_opening_fails(mock_pins: MockFactory, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "DOOR_WAIT_S", 0.3)
    mock_pins.pin(27).drive_high()
    results = by_name(selftest(config(actuators=GPIO), tmp_path).check_io())
    assert results["relay"].status == "FAIL"
    assert "in parallel with the door-open button" in results["relay"].detail
    assert mock_pins.pin(17).state is True, "relay left released (low-trigger board: high)"


def test_active_fire_input_fails_and_the_relay_is_not_clicked(mock_pins: MockFactory, tmp_path: Path) -> None:
    mock_pins.pin(27).drive_low()  # fire service active
    results = by_name(selftest(config(actuators=GPIO), tmp_path).check_io())
    assert results["fire"].status == "FAIL" and "ACTIVE" in results["fire"].detail
    assert results["relay"].status == "FAIL" and "not clicked" in results["relay"].detail
    states = [s.state for s in mock_pins.pin(17).states]
    assert False not in states[states.index(True):], "once configured (high = released) it never went low"


def test_relay_without_door_input_passes_with_a_listen_note(mock_pins: MockFactory, tmp_path: Path) -> None:
    cfg = config(actuators={**GPIO, "door_pin": None, "fire_pin": None})
    results = by_name(selftest(cfg, tmp_path).check_io())
    assert results["relay"].status == "PASS" and "listen" in results["relay"].detail
    assert results["fire"].status == "SKIP"


class FakeBridge:
    def __init__(self, door_follows_relay: bool) -> None:
        self.follow = door_follows_relay
        self.relay: list[bool] = []
        self.closed = False

    def set_relay(self, held: bool) -> bool:
        self.relay.append(held)
        return True

    def fire_active(self) -> bool:
        return False

    def door_open(self) -> bool | None:
        return bool(self.relay and self.relay[-1] and self.follow)

    def close(self) -> None:
        self.closed = True


def test_bridge_backend_clicks_through_the_io_board(tmp_path: Path) -> None:
    bridge = FakeBridge(door_follows_relay=True)
    cfg = config(actuators={"backend": "bridge", "voice": {"mode": "none"}})
    results = by_name(selftest(cfg, tmp_path, bridge_factory=lambda c: bridge).check_io())
    assert results["relay"].status == "PASS"
    assert bridge.relay == [True, False] and bridge.closed


# --- speaker, clock -------------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.result = (rc, stdout, stderr)

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), *self.result)


def test_speaker_plays_the_warning_through_aplay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.shutil, "which", lambda name: f"/usr/bin/{name}")
    runner = FakeRunner()
    cfg = config(actuators={"voice": {"mode": "alsa", "alsa_device": "plughw:1"}})
    result = selftest(cfg, tmp_path, run=runner).check_speaker()
    assert result.status == "PASS"
    assert runner.calls[0][:4] == ["/usr/bin/aplay", "-q", "-D", "plughw:1"]
    assert runner.calls[0][4].endswith("warning.wav")


def test_speaker_fails_without_aplay_or_when_aplay_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(actuators={"voice": {"mode": "alsa"}})
    monkeypatch.setattr(st.shutil, "which", lambda name: None)
    assert "apt install alsa-utils" in selftest(cfg, tmp_path).check_speaker().detail
    monkeypatch.setattr(st.shutil, "which", lambda name: f"/usr/bin/{name}")
    failed = selftest(cfg, tmp_path, run=FakeRunner(1, stderr="aplay: main:831: audio open error: No such file")
                      ).check_speaker()
    assert failed.status == "FAIL" and "audio open error" in failed.detail


@pytest.mark.parametrize(("year", "ntp", "expected"), [
    (2026, "yes", ("PASS", "PASS")),
    (2026, "no", ("PASS", "FAIL")),
    (1970, "yes", ("FAIL", "PASS")),
])
def test_clock_year_and_ntp_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, year: int, ntp: str,
                                  expected: tuple[str, str]) -> None:
    monkeypatch.setattr(st.shutil, "which", lambda name: f"/usr/bin/{name}")
    test = selftest(config(), tmp_path, run=FakeRunner(0, stdout=ntp + "\n"),
                    now=lambda: dt.datetime(year, 1, 2, tzinfo=UTC))
    assert tuple(r.status for r in test.check_clock()) == expected


def test_ntp_state_unknown_without_systemd_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.shutil, "which", lambda name: f"/usr/bin/{name}")
    runner = FakeRunner(1, stderr="System has not been booted with systemd as init system (PID 1).")
    assert by_name(selftest(config(), tmp_path, run=runner).check_clock())["ntp"].status == "SKIP"


# --- broker ---------------------------------------------------------------------------------------------


def test_broker_round_trip_on_the_units_own_topic(mosquitto: Any, tmp_path: Path) -> None:
    result = selftest(config(mqtt={"url": mosquitto.url}), tmp_path).check_broker()
    assert result.status == "PASS", result.detail
    assert "liftguard/v1/units/unit-7/selftest" in result.detail


def test_broker_that_is_down_fails(tmp_path: Path) -> None:
    from tests.support.mosquitto import free_port

    result = selftest(config(mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"}), tmp_path).check_broker()
    assert result.status == "FAIL" and "cannot reach" in result.detail


def test_broker_refusing_the_password_fails(mosquitto: Any, tmp_path: Path) -> None:
    (tmp_path / "passwords").write_text("")
    mosquitto.anonymous = False
    mosquitto.extra_config = f"password_file {tmp_path / 'passwords'}"
    mosquitto.restart()
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("wrong")
    cfg = config(mqtt={"url": mosquitto.url, "password_file": "mqtt-password"})
    result = selftest(cfg, tmp_path, broker_timeout_s=5).check_broker()
    assert result.status == "FAIL" and "refused the connection" in result.detail


# --- the whole command ------------------------------------------------------------------------------------


def rows(table: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in table.splitlines()[1:-1]}


def test_selftest_prints_a_table_and_exits_0_only_without_fail(tmp_path: Path, mosquitto: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.shutil, "which", lambda name: None)  # no timedatectl, no aplay
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({"unit": {"id": "unit-7"}, "camera": {"source": "cam"},
                                        "actuators": {"backend": "none", "voice": {"mode": "none"}},
                                        "mqtt": {"url": mosquitto.url}}))
    cv2.imwrite(str(tmp_path / "reference.png"), view(scene()))
    out = io.StringIO()
    seams = {"grab": lambda s: view(scene()), "detector_factory": lambda c: FakeDetector(1)}
    assert selftest_main(["--config", str(cfg_path)], out=out, **seams) == 0
    table = out.getvalue()
    assert table.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert rows(table) == {"config": "PASS", "clock": "PASS", "ntp": "SKIP", "camera": "PASS", "view": "PASS",
                           "model": "PASS", "relay": "SKIP", "fire": "SKIP", "speaker": "SKIP", "broker": "PASS"}
    assert table.splitlines()[-1] == "0 FAIL, 6 PASS, 4 SKIP"

    out = io.StringIO()
    seams["grab"] = lambda s: np.zeros((480, 640, 3), np.uint8)  # lens covered
    assert selftest_main(["--config", str(cfg_path), "--skip", "broker"], out=out, **seams) == 1
    assert rows(out.getvalue())["view"] == "FAIL" and rows(out.getvalue())["broker"] == "SKIP"


def test_invalid_config_is_one_fail_row(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("policy:\n  hold_max_s: 5000\n")
    out = io.StringIO()
    assert selftest_main(["--config", str(path)], out=out) == 1
    assert "config  FAIL    policy.hold_max_s" in out.getvalue()
