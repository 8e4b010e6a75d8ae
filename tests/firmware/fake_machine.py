"""A fake MicroPython `machine` module and clock, so the firmware runs under CPython in tests.

`FakeClock` is driven by the test (`advance(ms)`); `Pin` records a timeline of (ms, value) for
outputs, so tests assert "relay went 0 -> 1 -> 0 and was released 1000 ms after ..." rather than
call lists. `FakeClock.real()` follows time.monotonic for the threaded pseudo-terminal tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap here


class FakeClock:
    def __init__(self, start_ms: int = 0, real: bool = False) -> None:
        self._ms = start_ms
        self._real = real
        self._t0 = time.monotonic()

    @classmethod
    def realtime(cls) -> FakeClock:
        return cls(real=True)

    def ticks_ms(self) -> int:
        if self._real:
            return int((time.monotonic() - self._t0) * 1000) % TICKS_PERIOD
        return self._ms % TICKS_PERIOD

    def ticks_add(self, ticks: int, delta: int) -> int:
        return (ticks + delta) % TICKS_PERIOD

    def ticks_diff(self, a: int, b: int) -> int:
        half = TICKS_PERIOD // 2
        return ((a - b + half) % TICKS_PERIOD) - half

    def advance(self, ms: int) -> None:
        assert not self._real
        self._ms += ms

    def sleep_ms(self, ms: int) -> None:
        if self._real:
            time.sleep(ms / 1000)
        else:
            self.advance(ms)


_clock = FakeClock()


def use_clock(clock: FakeClock) -> None:
    """Pins stamp their timelines with this clock."""
    global _clock
    _clock = clock


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, id: int, mode: int = IN, pull: int | None = None, value: int | None = None) -> None:
        self.id = id
        self.mode = mode
        self.pull = pull
        self._value = value if value is not None else (1 if pull == Pin.PULL_UP else 0)
        self.timeline: list[tuple[int, int]] = [(_clock.ticks_ms(), self._value)]
        self._irq: Callable[[Pin], Any] | None = None
        self._lock = threading.Lock()

    def value(self, v: int | None = None) -> int:
        if v is None:
            return self._value
        v = 1 if v else 0
        with self._lock:
            if v != self._value:
                self.timeline.append((_clock.ticks_ms(), v))
            self._value = v
        return v

    def toggle(self) -> None:
        self.value(0 if self._value else 1)

    def irq(self, handler: Callable[[Pin], Any] | None = None, trigger: int = 0) -> None:
        self._irq = handler

    def drive(self, v: int) -> None:
        """The outside world sets an input pin (fires the IRQ like the real edge would)."""
        self.value(v)
        if self._irq is not None:
            self._irq(self)

    def on_at(self) -> list[int]:
        return [t for t, v in self.timeline if v == 1]

    def off_at(self) -> list[int]:
        return [t for t, v in self.timeline if v == 0][1:]


class WDT:
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        self.timeout = timeout
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1
