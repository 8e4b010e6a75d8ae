"""The actuator seam: what every backend (gpiozero pins, the I/O board, none) offers the pipeline.

Energised relay = door held; de-energised = normal elevator operation. Every backend starts
released and `close()` releases; the app calls `close()` on every exit path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

FireCallback = Callable[[bool], None]


class Actuators(Protocol):
    @property
    def held(self) -> bool: ...

    def set_hold(self, held: bool) -> None: ...

    def set_alarm(self, on: bool) -> None: ...

    def fire_active(self) -> bool: ...

    def close(self) -> None: ...
