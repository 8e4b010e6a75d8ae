"""Host driver for the LiftGuard I/O board: an actuator backend beside plain GPIO.

`BridgeActuators(port, baud)` opens the board's serial port (plain os/termios, no pyserial) and
turns each call into an acknowledged command:

    set_relay(held) -> bool      play_voice(clip) -> bool      set_beacon(on) -> bool
    fire_active() -> bool        door_open() -> bool | None    progress()     close()

Heartbeats prove pipeline progress, not that a thread is alive: `progress()` sends a HEARTBEAT and
the app calls it after every frame that went through the whole pipeline (detect, track, decide,
actuate). A hung detector, a stuck camera read or a deadlocked loop therefore stops the heartbeats,
and the board releases the relay on its own about 1 s later (firmware/logic.py HEARTBEAT_TIMEOUT_MS).

Commands are retried (same sequence number, so the board never executes one twice) until ACKed;
a NACK (e.g. fire-service input active) or no answer returns False and is logged.

Fail-safe choices:
- a release the board did not confirm pauses the heartbeats long enough for the board's own
  heartbeat timeout to release the relay (release is guaranteed either way);
- `fire_active()` answers True when the board's input reports are stale (link down): no hold is
  attempted on a link that could not keep it anyway;
- `close()` releases relay and beacon, then closes the port (no heartbeat follows, which would
  release it too).
"""

from __future__ import annotations

import logging
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from contract import serial_protocol as P
from contract.errors import LiftGuardError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
HEARTBEAT_S = 0.1  # at most one HEARTBEAT per this interval however fast frames go
BOARD_HEARTBEAT_TIMEOUT_S = 0.9  # firmware/logic.py HEARTBEAT_TIMEOUT_MS


class BridgeError(LiftGuardError, OSError):
    """The I/O board's serial port could not be opened or used."""


def open_serial(path: str, baud: int) -> int:
    """Open a serial device (or pty) raw, 8N1, no flow control; returns the file descriptor."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise BridgeError(f"cannot open I/O board port {path}: {exc.strerror}") from None
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        speed = getattr(termios, f"B{baud}", None)
        if speed is None:
            raise BridgeError(f"unsupported baud rate {baud}")
        attrs[4] = attrs[5] = speed
        attrs[2] &= ~(termios.CSTOPB | termios.PARENB | getattr(termios, "CRTSCTS", 0))
        attrs[2] |= termios.CLOCAL | termios.CREAD
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIOFLUSH)
    except (termios.error, OSError) as exc:
        os.close(fd)
        raise BridgeError(f"cannot configure I/O board port {path}: {exc}") from None
    return fd


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.code = 0


class BridgeActuators:
    """Door-hold relay, voice, beacon and inputs through the I/O board (backend `bridge`)."""

    def __init__(self, port: str, baud: int = 115200, *, heartbeat_s: float = HEARTBEAT_S,
                 ack_timeout_s: float = 0.1, retries: int = 4, stale_after_s: float = 1.0,
                 clock: Clock = time.monotonic, fd: int | None = None,
                 on_fire: Callable[[bool], None] | None = None, voice_repeat_s: float = 8.0) -> None:
        self.port = port
        self.voice_repeat_s = voice_repeat_s
        self.on_fire = on_fire
        self.heartbeat_s = heartbeat_s
        self.ack_timeout_s = ack_timeout_s
        self.retries = retries
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._fd = fd if fd is not None else open_serial(port, baud)
        self._write_lock = threading.Lock()
        self._cmd_lock = threading.Lock()  # one command in flight at a time
        self._state_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        # Random start: after a host restart the board must not mistake a new command for a retry.
        self._cmd_seq = P.Sequencer(os.urandom(1)[0])
        self._hb_seq = P.Sequencer()
        self._decoder = P.Decoder()
        self._stop = threading.Event()
        self._silent_until = 0.0
        self._inputs: tuple[bool, int] | None = None
        self._inputs_at: float | None = None
        self._status: dict[str, int] | None = None
        self._status_event = threading.Event()
        self._stale_logged = False
        self._alarm = threading.Event()
        self._last_heartbeat = float("-inf")
        self.relay_held = False
        self.heartbeats_sent = 0
        self.retries_sent = 0
        self._threads = [
            threading.Thread(target=self._read_loop, name="bridge-rx", daemon=True),
            threading.Thread(target=self._voice_loop, name="bridge-voice", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_config(cls, actuators: Any, on_fire: Callable[[bool], None] | None = None) -> BridgeActuators:
        """From `edge.config.ActuatorConfig` (bridge_port, bridge_baud, voice.repeat_s), like GpioActuators."""
        return cls(actuators.bridge_port, actuators.bridge_baud, on_fire=on_fire,
                   voice_repeat_s=actuators.voice.repeat_s)

    # -- edge.act.base.Actuators protocol (held, set_hold, set_alarm, fire_active, close) --------------

    @property
    def held(self) -> bool:
        return self.relay_held

    def set_hold(self, held: bool) -> None:
        self.set_relay(held)

    def set_alarm(self, on: bool) -> None:
        """Beacon on and voice clip 1 every `voice_repeat_s` while on (the board plays a clip once)."""
        if on:
            self._alarm.set()
        else:
            self._alarm.clear()
        self.set_beacon(on)

    # -- the actuator API -------------------------------------------------------------------------

    def set_relay(self, held: bool) -> bool:
        """Hold (True) or release (False) the door; True once the board confirmed it."""
        ok, code = self._command(P.RELAY_SET, bytes([1 if held else 0]))
        if ok:
            self.relay_held = held
        elif held:
            self.relay_held = False
            log.warning("I/O board refused or missed the hold: %s", self._why(code))
        else:
            # Not confirmed: go quiet so the board's heartbeat timeout releases the relay itself.
            self.relay_held = False
            with self._state_lock:
                self._silent_until = self.clock() + BOARD_HEARTBEAT_TIMEOUT_S + 0.5
            log.error("I/O board did not confirm the release (%s); pausing heartbeats so its watchdog "
                      "releases the relay", self._why(code))
        return ok

    def play_voice(self, clip: int = 1) -> bool:
        ok, code = self._command(P.VOICE_PLAY, bytes([clip & 0xFF]))
        if not ok:
            log.warning("I/O board voice clip %d failed: %s", clip, self._why(code))
        return ok

    def set_beacon(self, on: bool) -> bool:
        ok, code = self._command(P.BEACON_SET, bytes([1 if on else 0]))
        if not ok:
            log.warning("I/O board beacon failed: %s", self._why(code))
        return ok

    def fire_active(self) -> bool:
        """Fire-service / inspection input; True (suppress holds) when the board's reports are stale."""
        inputs = self._fresh_inputs()
        return True if inputs is None else inputs[0]

    def door_open(self) -> bool | None:
        """Door-open input; None when not wired or the board's reports are stale."""
        inputs = self._fresh_inputs()
        if inputs is None or inputs[1] == P.DOOR_NOT_WIRED:
            return None
        return inputs[1] == P.DOOR_OPEN

    @property
    def link_ok(self) -> bool:
        return self._fresh_inputs() is not None

    def status(self, timeout_s: float = 0.5) -> dict[str, int] | None:
        """Ask the board for STATUS: relay, beacon, reason (protocol.REASON_*), hold_s, uptime_s."""
        self._status_event.clear()
        ok, _ = self._command(P.STATUS_REQ, b"")
        if not ok or not self._status_event.wait(timeout_s):
            return None
        with self._state_lock:
            return dict(self._status) if self._status else None

    def close(self) -> None:
        """Release relay and beacon, stop the heartbeats, close the port. Safe to call twice."""
        if self._stop.is_set():
            return
        try:
            self._alarm.clear()
            self.set_relay(False)
            self.set_beacon(False)
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=2)
            os.close(self._fd)

    def __enter__(self) -> BridgeActuators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _why(code: int) -> str:
        return P.NACK_NAMES.get(code, "no answer") if code else "no answer"

    def _fresh_inputs(self) -> tuple[bool, int] | None:
        with self._state_lock:
            inputs, at = self._inputs, self._inputs_at
        fresh = at is not None and self.clock() - at <= self.stale_after_s
        if not fresh and not self._stale_logged and at is not None:
            log.error("I/O board input reports are stale: link down? treating fire-service as active")
        self._stale_logged = not fresh and at is not None
        return inputs if fresh else None

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            view = memoryview(frame)
            deadline = self.clock() + 0.5
            while view:
                try:
                    n = os.write(self._fd, view)
                    view = view[n:]
                except BlockingIOError:
                    if self.clock() > deadline:
                        raise BridgeError(f"I/O board port {self.port} does not accept data") from None
                    select.select([], [self._fd], [], 0.05)

    def _command(self, msg_type: int, payload: bytes) -> tuple[bool, int]:
        """Send until ACK/NACK or retries run out; (ok, nack_code)."""
        if self._stop.is_set():
            return False, 0
        with self._cmd_lock:
            seq = self._cmd_seq.next()
            pending = _Pending()
            self._pending[seq] = pending
            frame = P.encode(msg_type, seq, payload)
            try:
                for attempt in range(self.retries + 1):
                    if attempt:
                        self.retries_sent += 1
                    try:
                        self._write(frame)
                    except (OSError, BridgeError) as exc:
                        log.error("I/O board write failed: %s", exc)
                        return False, 0
                    if pending.done.wait(self.ack_timeout_s):
                        return pending.ok, pending.code
                return False, 0
            finally:
                self._pending.pop(seq, None)

    def progress(self) -> bool:
        """A frame went through the whole pipeline: tell the board the host is alive (HEARTBEAT).

        Call it from the frame loop, never from a timer: the board's 1 s release must fire when the
        pipeline stops, even if the process is still running. Rate-limited to one per heartbeat_s;
        skipped while heartbeats are paused after an unconfirmed release. True if one was sent."""
        if self._stop.is_set():
            return False
        now = self.clock()
        with self._state_lock:
            if now < self._silent_until or now - self._last_heartbeat < self.heartbeat_s:
                return False
            self._last_heartbeat = now
        try:
            self._write(P.encode(P.HEARTBEAT, self._hb_seq.next()))
        except (OSError, BridgeError) as exc:
            log.error("I/O board heartbeat failed: %s", exc)
            return False
        self.heartbeats_sent += 1
        return True

    def _voice_loop(self) -> None:
        # Its own thread: a command waits for its ACK, which must never delay a heartbeat.
        while not self._stop.is_set():
            if not self._alarm.wait(timeout=0.1):
                continue
            self.play_voice(1)  # a failure is logged there; the next repeat tries again
            deadline = self.clock() + self.voice_repeat_s
            while self._alarm.is_set() and not self._stop.is_set() and self.clock() < deadline:
                self._stop.wait(0.05)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._fd, 256)
            except BlockingIOError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("I/O board read failed: %s", exc)
                    self._stop.wait(0.5)
                continue
            for msg in self._decoder.feed(data):
                self._dispatch(msg)

    def _dispatch(self, msg: tuple[int, int, bytes]) -> None:
        msg_type, _seq, payload = msg
        if msg_type in (P.ACK, P.NACK):
            pending = self._pending.get(payload[0])
            if pending is not None:
                pending.ok = msg_type == P.ACK
                pending.code = payload[1] if msg_type == P.NACK else 0
                pending.done.set()
        elif msg_type == P.INPUTS:
            inputs = P.parse_inputs(payload)
            with self._state_lock:
                was_fire = self._inputs[0] if self._inputs is not None else False
                self._inputs = inputs
                self._inputs_at = self.clock()
            if inputs[0] != was_fire:
                log.warning("fire-service input %s (I/O board)", "active" if inputs[0] else "cleared")
                if inputs[0]:
                    self.relay_held = False  # the board has already cut the relay
                if self.on_fire is not None:
                    self.on_fire(inputs[0])
        elif msg_type == P.STATUS:
            with self._state_lock:
                self._status = P.parse_status(payload)
            self._status_event.set()
        else:
            log.debug("ignored from I/O board: %s", P.describe(msg))

    @property
    def frames_bad(self) -> int:
        """Corrupt frames received from the board (CRC / framing), for health metrics."""
        return self._decoder.frames_bad
