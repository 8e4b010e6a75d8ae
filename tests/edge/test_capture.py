"""Capture: reconnect with bounded backoff, frozen-picture detection, end of recordings — on fake sources."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from contract.errors import CameraError
from edge.config import CameraConfig
from edge.see.capture import Camera, CameraState, FrozenDetector


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class ScriptedReader:
    """Plays a script: 'f' = a new frame, 'x' = a failed read; `live` like a camera."""

    def __init__(self, script: str, clock: FakeClock, step: float = 0.1) -> None:
        self.script = list(script)
        self.clock = clock
        self.step = step
        self.ended = False
        self.live = True
        self.n = 0

    def read(self) -> np.ndarray | None:
        self.clock.t += self.step
        if not self.script:
            return None
        op = self.script.pop(0)
        if op == "x":
            return None
        self.n += 1
        return np.full((48, 64, 3), self.n % 250, np.uint8)

    def close(self) -> None:
        pass


def camera(opener: Callable[[], ScriptedReader], clock: FakeClock, **cfg: float) -> Camera:
    return Camera(CameraConfig(**cfg), opener=opener, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_a_silent_source_goes_offline_then_reconnects_with_growing_bounded_backoff() -> None:
    clock = FakeClock()
    opens: list[float] = []
    fail_opens = 4

    def opener() -> ScriptedReader:
        nonlocal fail_opens
        opens.append(clock.t)
        if len(opens) > 1 and fail_opens > 0:
            fail_opens -= 1
            raise CameraError("connection refused")
        return ScriptedReader("ff" + "x" * 30 if len(opens) == 1 else "f" * 5, clock)

    cam = camera(opener, clock, read_timeout_s=1.0, reconnect_min_s=0.5, reconnect_max_s=2.0)
    states = []
    for _ in range(200):
        cam.read()
        states.append(cam.state)
        if len(opens) == 6 and cam.state == CameraState.ONLINE:
            break
    assert CameraState.OFFLINE in states and states[-1] == CameraState.ONLINE
    gaps = [b - a for a, b in itertools.pairwise(opens[1:])]
    assert gaps == sorted(gaps)  # never shrinking while it keeps failing
    assert max(gaps) <= 2.0 + 0.2  # bounded by reconnect_max_s (+ one read step)


def test_identical_frames_for_long_enough_mean_frozen() -> None:
    detector = FrozenDetector(after_s=2.0, max_diff=0.5)
    still = np.full((48, 64, 3), 77, np.uint8)
    flags = [detector.update(still, t * 0.5) for t in range(8)]
    assert flags == [False, False, False, False, False, True, True, True]
    moving = np.full((48, 64, 3), 200, np.uint8)
    assert detector.update(moving, 4.0) is False


def test_a_frozen_camera_is_not_ok() -> None:
    clock = FakeClock()

    class Frozen(ScriptedReader):
        def read(self) -> np.ndarray | None:
            self.clock.t += 0.5
            return np.full((48, 64, 3), 9, np.uint8)

    cam = camera(lambda: Frozen("", clock), clock, frozen_after_s=2.0)
    for _ in range(10):
        cam.read()
    assert cam.state == CameraState.FROZEN and not cam.ok


def test_a_recording_ends_instead_of_reconnecting() -> None:
    clock = FakeClock()
    reader = ScriptedReader("fff", clock)

    def opener() -> ScriptedReader:
        return reader

    cam = camera(opener, clock)
    frames = [cam.read() for _ in range(3)]
    reader.ended = True
    assert cam.read() is None and cam.ended
    assert [f.index for f in frames if f] == [0, 1, 2]


def test_a_missing_file_source_is_a_camera_error() -> None:
    from edge.see.capture import open_source

    with pytest.raises(CameraError, match="not found"):
        open_source(CameraConfig(source="/nonexistent/clip.mp4"))
