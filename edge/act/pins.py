"""gpiozero pin factories by name (lgpio for the Raspberry Pi 5, mock for tests and the demo)."""

from __future__ import annotations

from typing import Any

from gpiozero.exc import GPIOZeroError

from contract.errors import ActuatorError


def make_pin_factory(name: str) -> Any:
    """gpiozero pin factory by name. `auto`: None, i.e. gpiozero's own choice ($GPIOZERO_PIN_FACTORY,
    else lgpio, rpigpio, pigpio, native in that order); `lgpio` is the one for the Raspberry Pi 5
    (`pip install 'liftguard[pi]'`). Raises ActuatorError with one clear line when it cannot be had."""
    if name == "auto":
        return None
    try:
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "native":
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
        if name == "mock":
            from gpiozero.pins.mock import MockFactory

            return MockFactory()
    except ImportError as exc:
        raise ActuatorError(f"pin factory {name!r} is not installed ({exc.name or exc}); for lgpio: "
                            "pip install 'liftguard[pi]'") from None
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        raise ActuatorError(f"pin factory {name!r} cannot drive this machine's GPIO: {exc}") from None
    raise ActuatorError(f"unknown pin factory {name!r}")
