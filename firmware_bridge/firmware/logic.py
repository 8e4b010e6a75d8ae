"""I/O-board logic: everything the firmware decides, free of hardware and of the real clock.

Runs under MicroPython on the board (driven by main.py) and under CPython in the tests (driven by a
fake `machine` module and a fake clock). Pins are any objects with `value()` / `value(v)`; the
clock is any object with `ticks_ms()`, `ticks_add(t, ms)` and `ticks_diff(a, b)` (MicroPython's `time` module is one).

Safety rules this file enforces on its own, whatever the host does:
- the relay is energised only while host heartbeats keep arriving: more than HEARTBEAT_TIMEOUT_MS
  without one releases it (a crashed, hung or unplugged host cannot keep a door held);
- one hold lasts at most hold_cap_ms (hard cap), followed by a cool-down in which holds are refused;
- the fire-service / inspection input releases the relay on the next tick (and from the pin
  interrupt in main.py) and refuses new holds while active. Independently of this code, the
  fire-service contact is wired in series with the relay contact (docs/INSTALL.md), so fire
  service cuts the hold in hardware even if this firmware is wrong;
- after a reset the relay pin starts low (released) and a hold needs a fresh RELAY_SET from the host.
"""

try:
    from contract import serial_protocol as P  # CPython (tests, host)
except ImportError:  # pragma: no cover - on the board, serial_protocol.py sits next to this file
    import serial_protocol as P  # type: ignore[no-redef]

HEARTBEAT_TIMEOUT_MS = 900  # released at most ~1 s after the last heartbeat, tick included
HOLD_CAP_MS = 600000  # 10 min: above the host's own schema cap (policy.hold_max_s <= 600 s)
COOLDOWN_MS = 30000
REPORT_MS = 100  # INPUTS report period (also sent at once on any change)


class BoardLogic:
    def __init__(self, relay, write, clock, fire=None, fire_active_high=False, door=None,
                 door_active_high=True, beacon=None, voice=None,
                 heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS, hold_cap_ms=HOLD_CAP_MS,
                 cooldown_ms=COOLDOWN_MS, report_ms=REPORT_MS):
        self.relay = relay
        self.write = write  # callable(bytes): one encoded frame to the host
        self.clock = clock
        self.fire = fire
        self.fire_active_high = fire_active_high
        self.door = door
        self.door_active_high = door_active_high
        self.beacon = beacon
        self.voice = voice  # callable(clip) or None
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.hold_cap_ms = hold_cap_ms
        self.cooldown_ms = cooldown_ms
        self.report_ms = report_ms

        self.relay.value(0)
        if self.beacon is not None:
            self.beacon.value(0)
        self.decoder = P.Decoder()
        self.seq = P.Sequencer()
        self.boot_ms = clock.ticks_ms()
        self.relay_on = False
        self.beacon_on = False
        self.hold_started = 0
        self.last_heartbeat = None
        self.cooldown_until = None
        self.last_reason = P.REASON_BOOT
        self.last_command = None  # (type, seq, payload) of the last executed command
        self.last_reply = b""
        self.last_inputs = None
        self.last_report = None
        self.releases = []  # (ticks_ms, reason): a short log for STATUS and tests

    # -- inputs -----------------------------------------------------------------------------------

    def fire_active(self):
        if self.fire is None:
            return False
        return bool(self.fire.value()) == self.fire_active_high

    def door_state(self):
        if self.door is None:
            return P.DOOR_NOT_WIRED
        return P.DOOR_OPEN if bool(self.door.value()) == self.door_active_high else P.DOOR_CLOSED

    # -- relay ------------------------------------------------------------------------------------

    def release(self, reason):
        self.relay.value(0)  # first the pin, then the bookkeeping
        if self.relay_on:
            self.releases.append((self.clock.ticks_ms(), reason))
            if len(self.releases) > 16:
                self.releases.pop(0)
        self.relay_on = False
        self.last_reason = reason

    def fire_interrupt(self, _pin=None):
        """Pin IRQ handler (main.py): cut the relay now, bookkeeping on the next tick."""
        if self.fire_active():
            self.relay.value(0)

    def _hold(self, now):
        if self.fire_active():
            return P.NACK_FIRE_ACTIVE
        if self.cooldown_until is not None and self.clock.ticks_diff(self.cooldown_until, now) > 0:
            return P.NACK_COOLDOWN
        if not self.relay_on:
            self.hold_started = now
        self.relay_on = True
        self.relay.value(1)
        return 0

    # -- host traffic -----------------------------------------------------------------------------

    def receive(self, data):
        """Bytes from the host (any chunking, any garbage)."""
        for msg in self.decoder.feed(data):
            self.handle(msg)

    def handle(self, msg):
        msg_type, seq, payload = msg
        now = self.clock.ticks_ms()
        if msg_type == P.HEARTBEAT:
            self.last_heartbeat = now
            return
        if msg_type not in P.COMMANDS:
            if msg_type not in P.TYPE_NAMES:
                self._send(P.NACK, bytes([seq, P.NACK_UNKNOWN_TYPE]))
            return
        if self.last_command == msg:  # a retry whose ACK was lost: answer again, do not redo
            self.write(self.last_reply)
            return
        code = 0
        if msg_type == P.RELAY_SET:
            if payload[0] > 1:
                code = P.NACK_BAD_PAYLOAD
            elif payload[0]:
                self.last_heartbeat = now  # a hold request is proof of life too
                code = self._hold(now)
            else:
                self.release(P.REASON_HOST)
        elif msg_type == P.VOICE_PLAY:
            if self.voice is not None:
                self.voice(payload[0])
        elif msg_type == P.BEACON_SET:
            self.beacon_on = payload[0] != 0
            if self.beacon is not None:
                self.beacon.value(1 if self.beacon_on else 0)
        reply = P.encode(P.ACK, self.seq.next(), bytes([seq])) if code == 0 else \
            P.encode(P.NACK, self.seq.next(), bytes([seq, code]))
        self.last_command = msg
        self.last_reply = reply
        self.write(reply)
        if msg_type == P.STATUS_REQ:
            self.send_status()

    def _send(self, msg_type, payload):
        self.write(P.encode(msg_type, self.seq.next(), payload))

    def send_status(self):
        now = self.clock.ticks_ms()
        hold_s = self.clock.ticks_diff(now, self.hold_started) // 1000 if self.relay_on else 0
        uptime_s = self.clock.ticks_diff(now, self.boot_ms) // 1000
        self._send(P.STATUS, P.status_payload(self.relay_on, self.beacon_on, self.last_reason, hold_s, uptime_s))

    # -- the periodic step ------------------------------------------------------------------------

    def tick(self):
        """Call every few milliseconds: enforces the safety rules and reports inputs."""
        now = self.clock.ticks_ms()
        fire = self.fire_active()
        host_silent = self.last_heartbeat is None or \
            self.clock.ticks_diff(now, self.last_heartbeat) > self.heartbeat_timeout_ms
        if host_silent:
            self.last_command = None  # a restarted host starts a new conversation
        if self.relay_on:
            if fire:
                self.release(P.REASON_FIRE)
            elif host_silent:
                self.release(P.REASON_HEARTBEAT)
            elif self.clock.ticks_diff(now, self.hold_started) >= self.hold_cap_ms:
                self.release(P.REASON_CAP)
                self.cooldown_until = self.clock.ticks_add(now, self.cooldown_ms)
        else:
            self.relay.value(0)  # belt and braces: an IRQ or glitch can never leave it half-set
        inputs = (fire, self.door_state())
        if inputs != self.last_inputs or self.last_report is None or \
                self.clock.ticks_diff(now, self.last_report) >= self.report_ms:
            self.last_inputs = inputs
            self.last_report = now
            self._send(P.INPUTS, P.inputs_payload(inputs[0], inputs[1]))
