"""classify(): what ingest accepts from a unit and what it rejects, and under which counter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import samples
from contract.clips import encode_chunk
from contract.mqtt import MAX_SNAPSHOT_BYTES, encode
from fleet.ingest import Rejected, classify

T = "liftguard/v1/units/u-1/"
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100
HB = samples.heartbeat("u-1", ts=1.0, inference_p50_ms=1, inference_p95_ms=2, model_id="m", software="s")
EV = samples.alert("u-1", incident_id="incident-1", ts=1.0, cls=None, confidence=None)
CLIP_CHUNK = encode_chunk("ab" * 32, 0, 2, b"PK\x03\x04 part of a clip")


@pytest.mark.parametrize(("topic", "payload", "kind"), [
    (T + "heartbeat", encode(HB), "heartbeat"),
    (T + "events", encode(EV), "event"),
    (T + "status", b"online", "status"),
    (T + "status", b"offline", "status"),
    (T + "status", json.dumps({"state": "stopped", "software": "1.0"}).encode(), "status"),
    (T + "snapshots/abc-123", JPEG, "snapshot"),
    (T + "cmd_result", json.dumps({"command_id": "c1", "command": "release", "ok": True, "ts": 1}).encode(),
     "cmd_result"),
    (T + "config/reported", json.dumps({"ok": True, "version": 7, "config": {"policy": {}}, "ts": 1}).encode(),
     "config_reported"),
    (T + "config/reported", json.dumps({"ok": False, "version": 8, "detail": "config refused: x", "ts": 1}).encode(),
     "config_reported"),
    (T + "clips/" + "0123456789abcdef" * 2, CLIP_CHUNK, "clip_part"),
    (T + "model/reported", json.dumps({"ok": True, "model_id": "cand-2", "stage": "shadow", "active": "a-1",
                                       "ts": 1}).encode(), "model_reported"),
])
def test_valid_uplink_messages_are_accepted_as_their_kind(topic: str, payload: bytes, kind: str) -> None:
    message = classify(topic, payload, 5.0)
    assert message is not None
    assert (message.kind, message.unit_id, message.received_at) == (kind, "u-1", 5.0)


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("liftguard/v2/units/u-1/heartbeat", encode(HB), "bad_topic"),
    ("liftguard/v1/units/../heartbeat", encode(HB), "bad_topic"),
    (T + "snapshots/../../x", JPEG, "bad_topic"),
    (T + "heartbeat", b"{not json", "bad_payload"),
    (T + "heartbeat", b"[1, 2]", "bad_payload"),
    (T + "heartbeat", json.dumps({**HB.model_dump(), "fps": -1}).encode(), "bad_payload"),
    (T + "heartbeat", json.dumps({**HB.model_dump(), "surprise": 1}).encode(), "bad_payload"),
    (T + "events", json.dumps({**EV.model_dump(), "type": "teleported"}).encode(), "bad_payload"),
    (T + "status", b"sleeping", "bad_payload"),
    (T + "heartbeat", encode(HB.model_copy(update={"unit_id": "u-2"})), "unit_mismatch"),
    (T + "events", encode(EV.model_copy(update={"unit_id": "u-2"})), "unit_mismatch"),
    (T + "snapshots/s1", b"GIF89a....", "bad_snapshot"),
    (T + "snapshots/s1", b"\xff\xd8\xff" + b"\0" * MAX_SNAPSHOT_BYTES, "bad_snapshot"),
    (T + "config/reported", b"{}", "bad_payload"),
    (T + "config/reported", b"applied", "bad_payload"),
    (T + "config/reported", json.dumps({"ok": True, "ts": 1, "surprise": 1}).encode(), "bad_payload"),
    (T + "config/reported", json.dumps({"ok": True, "version": -1, "ts": 1}).encode(), "bad_payload"),
    (T + "firmware", b"{}", "unknown_topic"),
    (T + "clips/../x", CLIP_CHUNK, "bad_topic"),
    (T + "clips/" + "A" * 32, CLIP_CHUNK, "bad_topic"),  # clip ids are 32 lower-case hex digits
    (T + "clips/" + "a" * 32, b"not a chunk", "bad_clip"),
    (T + "clips/" + "a" * 32, b"LGM1" + CLIP_CHUNK[4:], "bad_clip"),  # a model chunk is no clip chunk
    (T + "model/reported", b"{}", "bad_payload"),
    (T + "model/reported", json.dumps({"ok": True, "active": "a", "ts": 1, "stage": "sideways"}).encode(),
     "bad_payload"),
])
def test_invalid_messages_are_rejected_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        classify(topic, payload, 0.0)
    assert info.value.reason == reason


@pytest.mark.parametrize(("topic", "payload"), [
    (T + "cmd/release", b'{"command_id": "abcdefgh"}'),  # our own downlink, echoed by the `#` filter
    (T + "config/desired", b"{}"),
    (T + "status", b""),  # a retained status being cleared
    (T + "model/data", b"LGM1" + b"\0" * 600_000),  # our own model chunks
    (T + "model/reported", b""),  # a retained model/reported being cleared
])
def test_echoes_and_cleared_retained_messages_are_ignored_not_rejected(topic: str, payload: bytes) -> None:
    assert classify(topic, payload, 0.0) is None


@settings(max_examples=300, deadline=None)
@given(suffix=st.sampled_from(["heartbeat", "events", "status", "cmd_result", "snapshots/x1", "cmd/release",
                               "config/reported", "zz", "clips/" + "a" * 32, "model/reported"]),
       unit=st.text(max_size=70), payload=st.binary(max_size=2048))
def test_no_input_makes_classify_fail_other_than_by_rejecting(suffix: str, unit: str, payload: bytes) -> None:
    """Ingest distrusts every byte: whatever arrives, the answer is a message, None, or Rejected."""
    try:
        message = classify(f"liftguard/v1/units/{unit}/{suffix}", payload, 0.0)
    except Rejected as exc:
        assert exc.reason in {"bad_topic", "bad_payload", "unit_mismatch", "bad_snapshot", "unknown_topic",
                              "bad_clip"}
    else:
        assert message is None or message.unit_id == unit
