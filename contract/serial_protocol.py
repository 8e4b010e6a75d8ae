"""LiftGuard I/O-board wire protocol, version 1 (host <-> MCU over USB-CDC or UART).

Shared by the host driver (CPython) and the firmware (MicroPython): copy this file next to
firmware/main.py and firmware/logic.py on the board. So: no dataclasses, enums or typing at run
time; type annotations are ignored by MicroPython.

Frame on the wire: COBS(body) + b"\\x00", where

    body = type (1 byte) | seq (1 byte) | payload (0..MAX_PAYLOAD bytes) | CRC-16/CCITT-FALSE (2, big endian)

The CRC covers type, seq and payload. COBS removes every zero byte from the frame, so 0x00 only
ever marks a frame end and a receiver resynchronises on the next 0x00 after any garbage. Sequence
numbers count 0..255 per sender; a command is answered by ACK/NACK carrying the command's seq,
and a repeated seq (a retry whose ACK was lost) is acknowledged again but not executed twice.

Message payloads (all integers big endian):

    HEARTBEAT   host->board  (empty)          "host alive"; the board releases the relay after 1 s without one
    RELAY_SET   host->board  on (1)           1 = hold the door, 0 = release
    VOICE_PLAY  host->board  clip (1)         play voice clip number `clip`
    BEACON_SET  host->board  on (1)
    STATUS_REQ  host->board  (empty)          ask for a STATUS report
    INPUTS      board->host  fire (1) door (1)  fire: 0/1; door: 0 closed, 1 open, 2 not wired
    STATUS      board->host  relay (1) beacon (1) reason (1) hold_s (2) uptime_s (4)
    ACK         both         acked_seq (1)
    NACK        both         acked_seq (1) code (1)
"""

VERSION = 1
MAX_PAYLOAD = 16
MAX_BODY = 2 + MAX_PAYLOAD + 2
# COBS adds at most one byte per 254 plus one; keep a generous bound for the receive buffer.
MAX_ENCODED = MAX_BODY + 2

HEARTBEAT = 0x01
RELAY_SET = 0x02
VOICE_PLAY = 0x03
BEACON_SET = 0x04
STATUS_REQ = 0x05
INPUTS = 0x10
STATUS = 0x11
ACK = 0x20
NACK = 0x21

# Expected payload length per type (None = variable, checked by the handler).
PAYLOAD_LEN = {
    HEARTBEAT: 0,
    RELAY_SET: 1,
    VOICE_PLAY: 1,
    BEACON_SET: 1,
    STATUS_REQ: 0,
    INPUTS: 2,
    STATUS: 9,
    ACK: 1,
    NACK: 2,
}
TYPE_NAMES = {
    HEARTBEAT: "HEARTBEAT", RELAY_SET: "RELAY_SET", VOICE_PLAY: "VOICE_PLAY", BEACON_SET: "BEACON_SET",
    STATUS_REQ: "STATUS_REQ", INPUTS: "INPUTS", STATUS: "STATUS", ACK: "ACK", NACK: "NACK",
}
COMMANDS = (RELAY_SET, VOICE_PLAY, BEACON_SET, STATUS_REQ)  # answered with ACK or NACK

# NACK codes
NACK_BAD_PAYLOAD = 1
NACK_FIRE_ACTIVE = 2  # hold refused: fire-service / inspection input is active
NACK_COOLDOWN = 3  # hold refused: the board's hold cap released recently
NACK_UNKNOWN_TYPE = 4
NACK_NAMES = {NACK_BAD_PAYLOAD: "bad payload", NACK_FIRE_ACTIVE: "fire-service input active",
              NACK_COOLDOWN: "cool-down after hold cap", NACK_UNKNOWN_TYPE: "unknown message type"}

# Why the relay was last released (STATUS.reason)
REASON_NONE = 0
REASON_HOST = 1  # host asked
REASON_HEARTBEAT = 2  # host heartbeats stopped
REASON_CAP = 3  # the board's hard hold cap
REASON_FIRE = 4  # fire-service input
REASON_BOOT = 5  # board (re)started
REASON_NAMES = {REASON_NONE: "none", REASON_HOST: "host", REASON_HEARTBEAT: "heartbeat lost",
                REASON_CAP: "hold cap", REASON_FIRE: "fire service", REASON_BOOT: "boot"}

DOOR_CLOSED = 0
DOOR_OPEN = 1
DOOR_NOT_WIRED = 2


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection; check("123456789") = 0x29B1."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result has no zero bytes."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out.extend(block)
            block = bytearray()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out.extend(block)
                block = bytearray()
    out.append(len(block) + 1)
    out.extend(block)
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Inverse of cobs_encode; None for anything that is not valid COBS."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        chunk = data[i + 1:end]
        if chunk.find(b"\x00") >= 0:
            return None
        out.extend(chunk)
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def encode(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One complete frame (COBS + terminating zero) ready to write to the serial port."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too long")
    body = bytes([msg_type & 0xFF, seq & 0xFF]) + bytes(payload)
    crc = crc16_ccitt(body)
    return cobs_encode(body + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def decode_body(frame: bytes) -> tuple[int, int, bytes] | None:
    """(type, seq, payload) from one COBS frame without its zero terminator; None if corrupt."""
    if not frame or len(frame) > MAX_ENCODED:
        return None
    body = cobs_decode(frame)
    if body is None or len(body) < 4:
        return None
    crc = (body[-2] << 8) | body[-1]
    if crc16_ccitt(body[:-2]) != crc:
        return None
    msg_type = body[0]
    payload = bytes(body[2:-2])
    expected = PAYLOAD_LEN.get(msg_type)
    if expected is not None and len(payload) != expected:
        return None
    return msg_type, body[1], payload


class Decoder:
    """Incremental receiver: feed() any bytes, get the valid messages; garbage is counted, not raised."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.frames_ok = 0
        self.frames_bad = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        messages = []
        for byte in data:
            if byte == 0:
                if self._overflow:
                    self.frames_bad += 1
                elif self._buf:
                    msg = decode_body(bytes(self._buf))
                    if msg is None:
                        self.frames_bad += 1
                    else:
                        self.frames_ok += 1
                        messages.append(msg)
                self._buf = bytearray()
                self._overflow = False
            elif not self._overflow:
                if len(self._buf) >= MAX_ENCODED:
                    self._overflow = True  # drop until the next frame boundary
                else:
                    self._buf.append(byte)
        return messages


class Sequencer:
    """Sequence numbers 0..255 for one sender."""

    def __init__(self, start: int = 0) -> None:
        self._next = start & 0xFF

    def next(self) -> int:
        seq = self._next
        self._next = (self._next + 1) & 0xFF
        return seq


# --- payload helpers (both sides) ------------------------------------------------------------------


def inputs_payload(fire: bool, door: int) -> bytes:
    return bytes([1 if fire else 0, door & 0xFF])


def parse_inputs(payload: bytes) -> tuple[bool, int]:
    return payload[0] != 0, payload[1]


def status_payload(relay: bool, beacon: bool, reason: int, hold_s: int, uptime_s: int) -> bytes:
    hold_s = max(0, min(hold_s, 0xFFFF))
    uptime_s = max(0, min(uptime_s, 0xFFFFFFFF))
    return bytes([1 if relay else 0, 1 if beacon else 0, reason & 0xFF,
                  hold_s >> 8, hold_s & 0xFF,
                  (uptime_s >> 24) & 0xFF, (uptime_s >> 16) & 0xFF, (uptime_s >> 8) & 0xFF, uptime_s & 0xFF])


def parse_status(payload: bytes) -> dict[str, int]:
    return {
        "relay": payload[0],
        "beacon": payload[1],
        "reason": payload[2],
        "hold_s": (payload[3] << 8) | payload[4],
        "uptime_s": (payload[5] << 24) | (payload[6] << 16) | (payload[7] << 8) | payload[8],
    }


def describe(msg: tuple[int, int, bytes]) -> str:
    """Human-readable one-liner for logs."""
    msg_type, seq, payload = msg
    name = TYPE_NAMES.get(msg_type, f"0x{msg_type:02x}")
    return "{} seq={} payload={}".format(name, seq, repr(bytes(payload)))  # noqa: UP032 (MicroPython)
