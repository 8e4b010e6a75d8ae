"""Actuators: the door-hold relay, the voice warning and the beacon, plus the fire-service input.

Energised relay = door held; de-energised = normal elevator operation. Every backend starts
released and `close()` releases, and the app calls `close()` on every exit path. The fire-service
input cuts the relay directly from its edge callback (not only through the policy), so it acts
within milliseconds even if the frame loop is busy.
"""

from __future__ import annotations

import logging
import math
import shutil
import struct
import subprocess
import tempfile
import threading
import warnings
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gpiozero import DigitalInputDevice, Factory, OutputDevice
from gpiozero.exc import BadPinFactory, GPIOZeroError, PinFactoryFallback

from contract.errors import ActuatorError
from edge.config import ActuatorConfig, VoiceConfig

log = logging.getLogger(__name__)

FireCallback = Callable[[bool], None]


class Actuators(Protocol):
    @property
    def held(self) -> bool: ...

    def set_hold(self, held: bool) -> None: ...

    def set_alarm(self, on: bool) -> None: ...

    def fire_active(self) -> bool: ...

    def close(self) -> None: ...


def write_warning_chime(path: Path, seconds: float = 1.6, rate: int = 16000) -> Path:
    """A two-tone warning chime, generated so that no third-party audio is bundled.

    Sites replace it with a recorded spoken message (voice.wav_path)."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        freq = 880.0 if (t % 0.8) < 0.4 else 660.0
        envelope = min(1.0, (t % 0.4) * 20) * min(1.0, (0.4 - t % 0.4) * 20)
        frames += struct.pack("<h", int(12000 * envelope * math.sin(2 * math.pi * freq * t)))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path


class AlsaVoice:
    """Plays a WAV with `aplay` every repeat_s while the alarm is on, from its own thread."""

    def __init__(self, cfg: VoiceConfig) -> None:
        self.cfg = cfg
        self._aplay = shutil.which("aplay")
        if cfg.wav_path:
            self._wav = Path(cfg.wav_path)
        else:
            self._wav = write_warning_chime(Path(tempfile.gettempdir()) / "liftguard-warning.wav")
        if self._aplay is None:
            log.warning("aplay not found: the voice warning will only be logged")
        self._on = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="voice", daemon=True)
        self._thread.start()

    def set(self, on: bool) -> None:
        if on:
            self._on.set()
        else:
            self._on.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._on.wait(timeout=0.2):
                continue
            if self._aplay:
                try:
                    subprocess.run([self._aplay, "-q", "-D", self.cfg.alsa_device, str(self._wav)],
                                   timeout=30, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    log.warning("voice playback failed: %s", exc)
            self._stop.wait(self.cfg.repeat_s)

    def close(self) -> None:
        self._on.clear()
        self._stop.set()


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
