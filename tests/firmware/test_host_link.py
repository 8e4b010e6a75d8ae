"""Host driver <-> firmware logic over a real pseudo-terminal: lossy lines and a silent host."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from contract import serial_protocol as P
from firmware_bridge.host import BridgeActuators, BridgeError
from tests.firmware.board_sim import LossyLine, SimulatedBoard


def wait_until(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def board() -> Iterator[SimulatedBoard]:
    sim = SimulatedBoard()
    yield sim
    sim.close()


def test_relay_voice_beacon_and_inputs_over_the_serial_link(board: SimulatedBoard) -> None:
    with BridgeActuators(board.port) as host:
        wait_until(lambda: host.link_ok)
        assert host.fire_active() is False
        assert host.door_open() is False
        assert host.set_relay(True) is True
        assert board.relay.value() == 1
        board.door.drive(0)
        wait_until(lambda: host.door_open() is True)
        assert host.set_beacon(True) is True
        status = host.status()
        assert status is not None and status["relay"] == 1 and status["beacon"] == 1
        assert host.set_relay(False) is True
        assert board.relay.value() == 0
    assert [v for _, v in board.relay.timeline] == [0, 1, 0]


def run_pipeline(host: BridgeActuators, seconds: float, frame_s: float = 0.1) -> None:
    """A pipeline making progress: one processed frame every `frame_s`, each reported to the board."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        host.progress()
        time.sleep(frame_s)


def test_heartbeats_from_a_progressing_pipeline_keep_a_long_hold(board: SimulatedBoard) -> None:
    with BridgeActuators(board.port) as host:
        assert host.set_relay(True)
        run_pipeline(host, 1.6)
        assert board.relay.value() == 1, "heartbeats keep the hold past the 0.9 s board timeout"
        gaps = [b - a for a, b in zip(board.heartbeats_seen, board.heartbeats_seen[1:], strict=False)]
        assert gaps and max(gaps) < 600


def test_a_live_host_whose_pipeline_stopped_loses_the_hold_within_a_second(board: SimulatedBoard) -> None:
    """Issue 15 item 2: the process and the serial link are fine, but no frame is processed any more
    (a hung detector): heartbeats stop with the pipeline, so the board releases on its own."""
    with BridgeActuators(board.port) as host:
        assert host.set_relay(True)  # the hold request is the board's last proof of life
        held = time.monotonic()
        wait_until(lambda: board.relay.value() == 0, timeout=3.0)  # no frame processed since
        assert time.monotonic() - held < 1.6
        assert board.logic.last_reason == P.REASON_HEARTBEAT
        assert host.link_ok, "the link itself never went down: only the pipeline did"
        assert host.heartbeats_sent == 0


def test_close_releases_the_relay(board: SimulatedBoard) -> None:
    host = BridgeActuators(board.port)
    assert host.set_relay(True)
    host.close()
    host.close()  # idempotent
    assert board.relay.value() == 0
    assert board.logic.last_reason == P.REASON_HOST


def test_silent_host_relay_released_within_one_second(board: SimulatedBoard) -> None:
    """The host hangs (its bytes stop reaching the board): the board releases on its own."""
    with BridgeActuators(board.port) as host:
        assert host.set_relay(True)
        run_pipeline(host, 0.5)
        board.to_board.cut = True
        wait_until(lambda: board.relay.value() == 0, timeout=2.0)
        last_heartbeat = board.heartbeats_seen[-1]
        released = board.relay.off_at()[0]
        assert board.logic.last_reason == P.REASON_HEARTBEAT
        assert released - last_heartbeat <= 1_000, f"released {released - last_heartbeat} ms after silence"
        board.to_board.cut = False
        # The link is back, but the hold is not: it needs a fresh request.
        time.sleep(0.3)
        assert board.relay.value() == 0
        assert host.set_relay(True) is True
        assert board.relay.value() == 1


def test_commands_get_through_a_line_that_corrupts_and_drops_frames() -> None:
    sim = SimulatedBoard(to_board=LossyLine(1, corrupt=0.01, drop=0.15),
                         to_host=LossyLine(2, corrupt=0.01, drop=0.15))
    try:
        with BridgeActuators(sim.port, retries=8, ack_timeout_s=0.05) as host:
            results = []
            for i in range(20):
                results.append(host.set_relay(i % 2 == 0))
                assert sim.relay.value() == (1 if i % 2 == 0 else 0)
            assert all(results)
            assert host.retries_sent > 0, "the lossy line forced retries"
            assert sim.to_board.corrupted + sim.to_host.corrupted > 0
    finally:
        sim.close()


def test_fire_service_on_the_board_refuses_holds_and_the_host_sees_it(board: SimulatedBoard) -> None:
    with BridgeActuators(board.port) as host:
        assert host.set_relay(True)
        board.fire.drive(0)
        assert board.relay.value() == 0
        wait_until(lambda: host.fire_active())
        assert host.set_relay(False) is True
        assert host.set_relay(True) is False
        assert host.relay_held is False


def test_stale_board_reports_read_as_fire_active(board: SimulatedBoard) -> None:
    """No reports for a second: the host must not try to hold on a link that cannot keep it."""
    with BridgeActuators(board.port) as host:
        wait_until(lambda: host.link_ok)
        board.to_host.cut = True
        wait_until(lambda: not host.link_ok, timeout=2.0)
        assert host.fire_active() is True
        assert host.door_open() is None
        board.to_host.cut = False


def test_an_unconfirmed_release_pauses_heartbeats_so_the_board_releases() -> None:
    sim = SimulatedBoard()
    try:
        with BridgeActuators(sim.port, retries=1, ack_timeout_s=0.05) as host:
            assert host.set_relay(True)
            sim.to_host.cut = True  # the board hears us but its answers are lost
            t0 = time.monotonic()
            assert host.set_relay(False) is False
            # It did get the release frame here; to prove the fallback, put the relay back on behind
            # the host's back and check the paused heartbeats let the board's watchdog drop it.
            sim.relay.value(1)
            sim.logic.relay_on = True
            wait_until(lambda: sim.relay.value() == 0, timeout=2.0)
            assert time.monotonic() - t0 < 1.5
            assert sim.logic.last_reason == P.REASON_HEARTBEAT
    finally:
        sim.close()


def test_missing_port_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(BridgeError, match="cannot open I/O board port"):
        BridgeActuators("/dev/does-not-exist-ttyACM9")


def test_bridge_fits_the_actuators_protocol_of_edge_actuate(board: SimulatedBoard) -> None:
    fire_changes: list[bool] = []
    with BridgeActuators(board.port, on_fire=fire_changes.append) as host:
        wait_until(lambda: host.link_ok)
        host.set_hold(True)
        assert host.held is True and board.relay.value() == 1
        board.fire.drive(0)
        wait_until(lambda: fire_changes == [True])
        assert host.held is False and board.relay.value() == 0
        host.set_alarm(False)


def test_the_voice_warning_repeats_while_the_alarm_is_on_and_stops_with_it() -> None:
    clips: list[tuple[float, int]] = []
    board = SimulatedBoard(voice=lambda clip: clips.append((time.monotonic(), clip)))
    try:
        with BridgeActuators(board.port, voice_repeat_s=0.3) as host:
            host.set_alarm(True)
            wait_until(lambda: len(clips) >= 3, timeout=3.0)
            host.set_alarm(False)
            played = len(clips)
            time.sleep(0.6)
            assert len(clips) == played, "no clip after the alarm went off"
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(clips)]
        assert all(clip == 1 for _, clip in clips)
        assert all(0.25 <= g <= 1.5 for g in gaps), gaps  # every repeat_s, not back to back
    finally:
        board.close()
