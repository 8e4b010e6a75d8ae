"""contract.serial_protocol: framing, CRC and sequence numbers; garbage never crashes the decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import serial_protocol as P


def test_crc_is_crc16_ccitt_false() -> None:
    assert P.crc16_ccitt(b"123456789") == 0x29B1


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
])
def test_cobs_matches_the_reference_examples(raw: bytes, encoded: bytes) -> None:
    assert P.cobs_encode(raw) == encoded
    assert P.cobs_decode(encoded) == raw


@given(st.binary(max_size=600))
def test_cobs_round_trips_and_never_emits_a_zero(data: bytes) -> None:
    encoded = P.cobs_encode(data)
    assert 0 not in encoded
    assert P.cobs_decode(encoded) == data


@given(st.sampled_from(sorted(P.PAYLOAD_LEN)), st.integers(0, 255), st.data())
def test_every_message_type_round_trips(msg_type: int, seq: int, data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=P.PAYLOAD_LEN[msg_type], max_size=P.PAYLOAD_LEN[msg_type]))
    frame = P.encode(msg_type, seq, payload)
    assert frame.endswith(b"\x00") and frame.count(0) == 1
    assert P.Decoder().feed(frame) == [(msg_type, seq, payload)]


def test_a_flipped_bit_is_rejected_and_counted() -> None:
    frame = bytearray(P.encode(P.RELAY_SET, 7, b"\x01"))
    frame[2] ^= 0x10
    decoder = P.Decoder()
    assert decoder.feed(bytes(frame)) == []
    assert decoder.frames_bad == 1


def test_wrong_payload_length_for_the_type_is_rejected() -> None:
    body = bytes([P.RELAY_SET, 1, 1, 1])  # RELAY_SET carries one byte, not two
    crc = P.crc16_ccitt(body)
    frame = P.cobs_encode(body + bytes([crc >> 8, crc & 0xFF])) + b"\x00"
    assert P.Decoder().feed(frame) == []


def test_decoder_resynchronises_after_garbage_and_split_reads() -> None:
    stream = b"\x13\x37garbage" + b"\x00" + P.encode(P.HEARTBEAT, 1) + b"\xff" * 100 + b"\x00" + \
        P.encode(P.INPUTS, 2, P.inputs_payload(True, P.DOOR_OPEN))
    decoder = P.Decoder()
    got = []
    for i in range(0, len(stream), 3):  # a serial port delivers arbitrary chunks
        got += decoder.feed(stream[i:i + 3])
    assert got == [(P.HEARTBEAT, 1, b""), (P.INPUTS, 2, b"\x01\x01")]
    assert decoder.frames_bad == 2


def test_sequence_numbers_wrap_at_256() -> None:
    seq = P.Sequencer(254)
    assert [seq.next() for _ in range(4)] == [254, 255, 0, 1]


def test_status_payload_round_trips() -> None:
    payload = P.status_payload(True, False, P.REASON_CAP, 600, 86_400)
    assert P.parse_status(payload) == {"relay": 1, "beacon": 0, "reason": P.REASON_CAP, "hold_s": 600,
                                       "uptime_s": 86_400}


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=64), st.builds(
    lambda t, s, p: P.encode(t, s, p[:P.PAYLOAD_LEN.get(t, 0)]),
    st.integers(0, 255), st.integers(0, 255), st.binary(max_size=16))), max_size=20))
def test_decoder_survives_any_mix_of_garbage_and_frames(chunks: list[bytes]) -> None:
    decoder = P.Decoder()
    for chunk in chunks:
        for msg_type, seq, payload in decoder.feed(chunk):
            assert 0 <= msg_type <= 255 and 0 <= seq <= 255
            assert len(payload) <= P.MAX_PAYLOAD


@given(st.binary(max_size=64))
def test_cobs_decode_and_decode_body_never_raise(data: bytes) -> None:
    assert P.cobs_decode(data) is None or isinstance(P.cobs_decode(data), bytes)
    assert P.decode_body(data) is None or len(P.decode_body(data) or ()) == 3
