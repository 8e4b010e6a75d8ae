"""Backend `gpio`: relay, voice-module trigger, beacon and fire-service input on gpiozero pins.

The fire-service input cuts the relay directly from its edge callback (not only through the policy),
so it acts within milliseconds even if the frame loop is busy.
"""

from __future__ import annotations

import logging
import threading
import warnings

from gpiozero import DigitalInputDevice, Factory, OutputDevice
from gpiozero.exc import BadPinFactory, GPIOZeroError, PinFactoryFallback

from contract.errors import ActuatorError
from edge.act.base import FireCallback
from edge.act.voice import AlsaVoice
from edge.config import ActuatorConfig

log = logging.getLogger(__name__)


class GpioActuators:
    """Relay, optional voice-module trigger, beacon and fire-service input on gpiozero pins.

    `pin_factory`: gpiozero's pin factory for every pin here (gpiozero's `pin_factory=` argument), e.g. a
    MockFactory for the demo; None uses gpiozero's default (real pins on the device). Never set globally.
    No usable GPIO raises ActuatorError with one line that says what to do."""

    def __init__(self, cfg: ActuatorConfig, on_fire: FireCallback | None = None,
                 pin_factory: Factory | None = None) -> None:
        self.cfg = cfg
        pins = pin_factory
        self.held = False
        self.on_fire = on_fire
        self._lock = threading.Lock()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PinFactoryFallback)  # the error below says it in one line
                self.relay = OutputDevice(cfg.relay_pin, active_high=cfg.relay_active_high, initial_value=False,
                                          pin_factory=pins)
        except BadPinFactory:
            raise ActuatorError("no GPIO on this machine (gpiozero found no pin factory): on a Raspberry Pi 5 "
                                "install lgpio (pip install 'liftguard[pi]'); elsewhere set actuators.backend to "
                                "'bridge' (I/O board) or 'none' (log only)") from None
        except (GPIOZeroError, OSError) as exc:
            raise ActuatorError(f"relay pin {cfg.relay_pin}: {exc}") from None
        self.voice_pin = (OutputDevice(cfg.voice.pin, active_high=cfg.voice.active_high, initial_value=False,
                                       pin_factory=pins)
                          if cfg.voice.mode == "gpio" and cfg.voice.pin else None)
        self.voice = AlsaVoice(cfg.voice) if cfg.voice.mode == "alsa" else None
        self.beacon = OutputDevice(cfg.beacon_pin, initial_value=False, pin_factory=pins) if cfg.beacon_pin else None
        self.fire: DigitalInputDevice | None = None
        if cfg.fire_pin:
            self.fire = DigitalInputDevice(cfg.fire_pin, pull_up=None, active_state=cfg.fire_active_high,
                                           pin_factory=pins)
            self.fire.when_activated = lambda: self._fire_changed(True)
            self.fire.when_deactivated = lambda: self._fire_changed(False)
        self.door = DigitalInputDevice(cfg.door_pin, pull_up=True, pin_factory=pins) if cfg.door_pin else None

    def _fire_changed(self, active: bool) -> None:
        if active:
            log.warning("fire-service input active: door released, holds suppressed")
            self.set_hold(False)
            self.set_alarm(False)
        if self.on_fire:
            self.on_fire(active)

    def fire_active(self) -> bool:
        return bool(self.fire and self.fire.is_active)

    def set_hold(self, held: bool) -> None:
        with self._lock:
            if self.relay.closed:
                return
            if held and self.fire_active():
                held = False  # the fire-service input always wins
            if held:
                self.relay.on()
            else:
                self.relay.off()
            self.held = held

    def set_alarm(self, on: bool) -> None:
        if self.voice_pin:
            self.voice_pin.value = on
        if self.voice:
            self.voice.set(on)
        if self.beacon:
            self.beacon.value = on

    def close(self) -> None:
        """Release everything. Safe to call more than once, from any exit path."""
        with self._lock:
            for device in (self.relay, self.voice_pin, self.beacon):
                if device is not None and not device.closed:
                    device.off()
            self.held = False
        if self.voice:
            self.voice.close()
        for device in (self.relay, self.voice_pin, self.beacon, self.fire, self.door):
            if device is not None:
                device.close()
