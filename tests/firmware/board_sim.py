"""The firmware logic on the far end of a pseudo-terminal, in a thread, with a lossy line.

The host driver opens the pty's slave path like a real /dev/ttyACM0; this simulator reads the
master end, optionally corrupts or drops bytes in either direction, and runs BoardLogic with a
real-time clock, ticking every 5 ms like main.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading

from firmware_bridge.firmware.logic import BoardLogic
from tests.firmware import fake_machine
from tests.firmware.fake_machine import FakeClock, Pin


class LossyLine:
    """Corrupts a byte with probability `corrupt`, drops whole writes/reads with `drop`; `cut` drops all."""

    def __init__(self, seed: int, corrupt: float = 0.0, drop: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.corrupt = corrupt
        self.drop = drop
        self.cut = False
        self.corrupted = 0
        self.dropped = 0

    def __call__(self, data: bytes) -> bytes:
        if self.cut:
            return b""
        if self.drop and self.rng.random() < self.drop:
            self.dropped += 1
            return b""
        if not self.corrupt:
            return data
        out = bytearray(data)
        for i in range(len(out)):
            if self.rng.random() < self.corrupt:
                out[i] ^= 1 << self.rng.randrange(8)
                self.corrupted += 1
        return bytes(out)


class SimulatedBoard:
    def __init__(self, to_board: LossyLine | None = None, to_host: LossyLine | None = None,
                 **logic_kwargs: object) -> None:
        self.master, slave = os.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty exists until the host opens it
        self.to_board = to_board or LossyLine(0)
        self.to_host = to_host or LossyLine(0)
        self.clock = FakeClock.realtime()
        fake_machine.use_clock(self.clock)
        self.relay = Pin(15, Pin.OUT, value=0)
        self.fire = Pin(14, Pin.IN, Pin.PULL_UP)
        self.door = Pin(13, Pin.IN, Pin.PULL_UP)
        self.heartbeats_seen: list[int] = []  # ticks_ms of each heartbeat that got through
        self.logic = BoardLogic(self.relay, self._write, self.clock, fire=self.fire, door=self.door,
                                door_active_high=False, **logic_kwargs)
        self.fire.irq(handler=self.logic.fire_interrupt)
        original = self.logic.handle

        def handle(msg: tuple[int, int, bytes]) -> None:
            if msg[0] == 0x01:
                self.heartbeats_seen.append(self.clock.ticks_ms())
            original(msg)

        self.logic.handle = handle  # type: ignore[method-assign]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="board-sim", daemon=True)
        self._thread.start()

    def _write(self, frame: bytes) -> None:
        data = self.to_host(frame)
        if data:
            with contextlib.suppress(OSError):  # the host closed its end
                os.write(self.master, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.005)
            if ready:
                try:
                    data = os.read(self.master, 512)
                except OSError:
                    data = b""
                self.logic.receive(self.to_board(data))
            self.logic.tick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)
