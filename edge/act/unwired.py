"""Backend `none`: nothing switched, every change logged (a camera-only evaluation install)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class LogActuators:
    """backend `none`: nothing switched, every change logged (a camera-only evaluation install)."""

    def __init__(self) -> None:
        self.held = False

    def set_hold(self, held: bool) -> None:
        if held != self.held:
            log.info("relay (not wired): %s", "HOLD" if held else "release")
        self.held = held

    def set_alarm(self, on: bool) -> None:
        log.debug("alarm (not wired): %s", on)

    def fire_active(self) -> bool:
        return False

    def close(self) -> None:
        self.held = False
