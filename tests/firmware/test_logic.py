"""Firmware logic under CPython with a fake `machine` and a fake clock: timelines of the relay pin."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from contract import serial_protocol as P
from firmware_bridge.firmware.logic import BoardLogic
from tests.firmware import fake_machine
from tests.firmware.fake_machine import FakeClock, Pin

TICK_MS = 5  # main.py's loop period


class Board:
    """BoardLogic on fake pins, with a host-side decoder for what it sends back."""

    def __init__(self, clock: FakeClock, **kwargs: object) -> None:
        fake_machine.use_clock(clock)
        self.clock = clock
        self.relay = Pin(15, Pin.OUT, value=0)
        self.fire = Pin(14, Pin.IN, Pin.PULL_UP)  # active low: 1 = normal
        self.door = Pin(13, Pin.IN, Pin.PULL_UP)
        self.beacon = Pin(12, Pin.OUT, value=0)
        self.clips: list[int] = []
        self.sent = P.Decoder()
        self.replies: list[tuple[int, int, bytes]] = []
        self.seq = P.Sequencer(100)
        self.logic = BoardLogic(self.relay, self._write, clock, fire=self.fire, fire_active_high=False,
                                door=self.door, door_active_high=False, beacon=self.beacon,
                                voice=self.clips.append, **kwargs)
        self.fire.irq(handler=self.logic.fire_interrupt)

    def _write(self, frame: bytes) -> None:
        self.replies += self.sent.feed(frame)

    def host(self, msg_type: int, payload: bytes = b"", seq: int | None = None) -> int:
        seq = self.seq.next() if seq is None else seq
        self.logic.receive(P.encode(msg_type, seq, payload))
        return seq

    def run(self, ms: int, heartbeat_every_ms: int | None = None) -> None:
        """Advance time tick by tick, the host sending heartbeats every `heartbeat_every_ms`."""
        for t in range(0, ms, TICK_MS):
            if heartbeat_every_ms and t % heartbeat_every_ms == 0:
                self.host(P.HEARTBEAT)
            self.logic.tick()
            self.clock.advance(TICK_MS)

    def answers(self, seq: int) -> list[tuple[int, int]]:
        """(ACK/NACK, code) replies to the host command `seq`."""
        return [(t, p[1] if t == P.NACK else 0) for t, _, p in self.replies if t in (P.ACK, P.NACK) and p[0] == seq]


@pytest.fixture
def board() -> Board:
    return Board(FakeClock(start_ms=1_000))


def test_relay_starts_released(board: Board) -> None:
    board.run(100)
    assert board.relay.timeline == [(1_000, 0)]


def test_relay_released_within_one_second_of_the_host_going_silent(board: Board) -> None:
    """Timeline: held at 1000 ms with heartbeats every 200 ms until 3000 ms, then silence."""
    board.host(P.HEARTBEAT)
    board.host(P.RELAY_SET, b"\x01")
    board.run(2_000, heartbeat_every_ms=200)  # last heartbeat at 1000 + 1800 = 2800
    last_heartbeat = 2_800
    board.run(2_000)
    assert [v for _, v in board.relay.timeline] == [0, 1, 0]
    on_at, off_at = board.relay.on_at()[0], board.relay.off_at()[0]
    assert on_at == 1_000
    assert 0 < off_at - last_heartbeat <= 1_000, f"released {off_at - last_heartbeat} ms after the last heartbeat"
    assert board.logic.last_reason == P.REASON_HEARTBEAT


def test_a_hold_without_heartbeats_lasts_under_a_second(board: Board) -> None:
    board.host(P.RELAY_SET, b"\x01")
    board.run(1_500)
    assert board.relay.off_at()[0] - board.relay.on_at()[0] <= 1_000


def test_heartbeats_keep_a_hold_and_a_release_command_ends_it(board: Board) -> None:
    seq = board.host(P.RELAY_SET, b"\x01")
    board.run(5_000, heartbeat_every_ms=200)
    assert board.relay.value() == 1
    release = board.host(P.RELAY_SET, b"\x00")
    assert board.relay.value() == 0
    assert board.answers(seq) == [(P.ACK, 0)] and board.answers(release) == [(P.ACK, 0)]
    assert board.logic.last_reason == P.REASON_HOST


def test_hard_hold_cap_releases_and_refuses_holds_during_cool_down() -> None:
    board = Board(FakeClock(), hold_cap_ms=10_000, cooldown_ms=5_000)
    board.host(P.RELAY_SET, b"\x01")
    board.run(12_000, heartbeat_every_ms=200)  # the host keeps asking to hold
    assert board.relay.timeline == [(0, 0), (0, 1), (10_000, 0)]
    assert board.logic.last_reason == P.REASON_CAP
    refused = board.host(P.RELAY_SET, b"\x01")  # at 12 s, inside the cool-down
    assert board.answers(refused) == [(P.NACK, P.NACK_COOLDOWN)]
    board.run(4_000, heartbeat_every_ms=200)
    accepted = board.host(P.RELAY_SET, b"\x01")  # at 16 s, cool-down over
    assert board.answers(accepted) == [(P.ACK, 0)]
    assert board.relay.value() == 1


def test_fire_service_input_cuts_the_relay_at_once_and_refuses_holds(board: Board) -> None:
    board.host(P.RELAY_SET, b"\x01")
    board.run(500, heartbeat_every_ms=200)
    board.fire.drive(0)  # active low: fire service on; the pin interrupt fires
    assert board.relay.value() == 0, "released from the interrupt, before any tick"
    assert board.relay.off_at() == [1_500]
    board.run(10, heartbeat_every_ms=200)
    assert board.logic.last_reason == P.REASON_FIRE
    refused = board.host(P.RELAY_SET, b"\x01")
    assert board.answers(refused) == [(P.NACK, P.NACK_FIRE_ACTIVE)]
    assert board.relay.value() == 0


def test_fire_input_without_interrupt_still_releases_on_the_next_tick(board: Board) -> None:
    board.fire.irq(handler=None)
    board.host(P.RELAY_SET, b"\x01")
    board.run(100, heartbeat_every_ms=200)
    board.fire.value(0)
    board.run(TICK_MS, heartbeat_every_ms=200)
    assert board.relay.value() == 0
    assert board.relay.off_at()[0] - 1_100 <= TICK_MS


def test_inputs_are_reported_on_change_and_periodically(board: Board) -> None:
    board.run(300, heartbeat_every_ms=200)
    board.door.drive(0)  # door open (active low)
    board.run(TICK_MS)
    inputs = [P.parse_inputs(p) for t, _, p in board.replies if t == P.INPUTS]
    assert inputs[0] == (False, P.DOOR_CLOSED)
    assert inputs[-1] == (False, P.DOOR_OPEN)
    assert 3 <= len(inputs) <= 6  # every 100 ms plus the change


def test_a_retried_command_is_acknowledged_again_but_executed_once(board: Board) -> None:
    board.host(P.HEARTBEAT)
    seq = board.host(P.VOICE_PLAY, b"\x02")
    board.host(P.VOICE_PLAY, b"\x02", seq=seq)  # the ACK was lost; the host retries the same seq
    assert board.clips == [2]
    assert board.answers(seq) == [(P.ACK, 0), (P.ACK, 0)]


def test_beacon_and_status_request(board: Board) -> None:
    board.host(P.BEACON_SET, b"\x01")
    board.host(P.RELAY_SET, b"\x01")
    board.run(2_000, heartbeat_every_ms=200)
    board.host(P.STATUS_REQ)
    status = [P.parse_status(p) for t, _, p in board.replies if t == P.STATUS][-1]
    assert board.beacon.value() == 1
    assert status["relay"] == 1 and status["beacon"] == 1 and status["hold_s"] == 2


def test_bad_payloads_and_unknown_types_are_refused(board: Board) -> None:
    bad = board.host(P.RELAY_SET, b"\x07")
    unknown = board.host(0x7E, b"")
    assert board.answers(bad) == [(P.NACK, P.NACK_BAD_PAYLOAD)]
    assert board.answers(unknown) == [(P.NACK, P.NACK_UNKNOWN_TYPE)]
    assert board.relay.value() == 0


def test_ticks_wrap_around_does_not_hold_forever() -> None:
    board = Board(FakeClock(start_ms=fake_machine.TICKS_PERIOD - 500))
    board.host(P.RELAY_SET, b"\x01")
    board.run(2_000)
    assert board.relay.value() == 0
    assert board.logic.last_reason == P.REASON_HEARTBEAT


@pytest.fixture
def firmware_main(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Import firmware/main.py as the board would (flat imports), with the fake machine module."""
    firmware_dir = Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware"
    monkeypatch.syspath_prepend(str(firmware_dir))
    monkeypatch.setitem(sys.modules, "machine", fake_machine)
    sys.modules.pop("main", None)
    module = importlib.import_module("main")
    yield module
    sys.modules.pop("main", None)
    sys.modules.pop("logic", None)


def test_firmware_main_builds_with_the_relay_released_and_fire_irq_armed(firmware_main: ModuleType) -> None:
    clock = FakeClock()
    fake_machine.use_clock(clock)
    frames: list[bytes] = []
    logic, voice = firmware_main.build(frames.append, machine_mod=fake_machine, clock=clock)
    assert logic.relay.value() == 0
    assert logic.fire._irq == logic.fire_interrupt
    logic.receive(P.encode(P.VOICE_PLAY, 1, b"\x01"))
    assert voice.pin.value() == 1
    clock.advance(firmware_main.VOICE_PULSE_MS)
    voice.service()
    assert voice.pin.timeline == [(0, 0), (0, 1), (firmware_main.VOICE_PULSE_MS, 0)]
