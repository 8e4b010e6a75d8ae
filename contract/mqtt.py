"""The MQTT contract between a unit and the fleet, version 1 (docs/ARCHITECTURE.md §3).

One module owns topic names and payload shapes so the device (producer) and the fleet
(consumer, which must distrust every byte) validate against the same definitions.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.bounds import Counter, Duration, JsonObject, Timestamp, bounded_int, refuse_constant
from contract.errors import PayloadError

PREFIX = "liftguard/v1/units"
UNIT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_UNIT_ID_RE = re.compile(UNIT_ID_PATTERN)
MAX_PAYLOAD_BYTES = 64 * 1024  # JSON payloads; snapshots have their own cap
MAX_SNAPSHOT_BYTES = 2 * 1024 * 1024

UnitId = Annotated[str, Field(pattern=UNIT_ID_PATTERN)]


def unit_topic(unit_id: str, suffix: str) -> str:
    """`liftguard/v1/units/{unit_id}/{suffix}`; refuses ids that would escape the unit's subtree."""
    if not _UNIT_ID_RE.match(unit_id):
        raise PayloadError(f"invalid unit id {unit_id!r}")
    return f"{PREFIX}/{unit_id}/{suffix}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a unit topic into (unit_id, suffix); raises PayloadError for anything else."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX or not _UNIT_ID_RE.match(parts[3]):
        raise PayloadError(f"not a LiftGuard v1 unit topic: {topic!r}")
    return parts[3], parts[4]


class _Strict(BaseModel):
    # allow_inf_nan=False: every float of every payload is finite (contract/bounds.py).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


EventType = Literal[
    "ebike_blocked",  # an e-bike was confirmed and the door held
    "cap_released",  # a hold reached hold_max_s and was released
    "remote_released",  # a hold was released by a fleet command
    "fire_override",  # fire-service / inspection input released or suppressed a hold
    "camera_fault",  # camera offline or frozen (holds suppressed while it lasts)
    "overload",  # inference over budget (holds suppressed while it lasts)
    "blocking_disabled",  # an e-bike was confirmed while blocking was disabled: alert only
    "shadow_decision",  # what a shadow (candidate) model would have done; it never actuates
]
Phase = Literal["start", "update", "end"]


class EventTimes(_Strict):
    """Wall-clock (or clip-time in replay) seconds of each step, for measuring decision latency."""

    first_seen: Timestamp | None = None
    capture: Timestamp | None = None
    decision: Timestamp | None = None
    relay: Timestamp | None = None
    voice: Timestamp | None = None
    end: Timestamp | None = None


class EventPayload(_Strict):
    """`events` topic, QoS 1. `event_id` is the dedupe key; `phase` groups start/update/end."""

    schema_version: Literal[1] = 1
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=8, max_length=64)
    incident_id: str = Field(min_length=8, max_length=64, description="same for start/update/end")
    unit_id: UnitId
    type: EventType
    phase: Phase
    ts: Timestamp
    times: EventTimes = EventTimes()
    track_id: Counter | None = None
    cls: str | None = Field(default=None, max_length=32)
    confidence: float | None = Field(default=None, ge=0, le=1)
    hold_s: float | None = Field(default=None, ge=0, le=3600)
    snapshot: str | None = Field(default=None, max_length=256, description="snapshot topic suffix")
    detail: str | None = Field(default=None, max_length=512)
    # The deciding model (ebike_blocked / blocking_disabled starts: the active model; shadow_decision:
    # the candidate). shadow_decision only: what the candidate would have done, and whether the active
    # model's relay was in the same state at that instant (agreement, per event).
    model_id: str | None = Field(default=None, max_length=128)
    would: Literal["hold", "release", "alert"] | None = None
    agrees: bool | None = None


CameraState = Literal["online", "offline", "frozen", "starting"]
RelayState = Literal["held", "released"]


class HeartbeatPayload(_Strict):
    """`heartbeat` topic, QoS 0, every heartbeat_s."""

    schema_version: Literal[1] = 1
    unit_id: UnitId
    ts: Timestamp
    uptime_s: Duration
    fps: float = Field(ge=0, le=1000)
    inference_p50_ms: float = Field(ge=0, le=1e6)
    inference_p95_ms: float = Field(ge=0, le=1e6)
    camera: CameraState
    relay: RelayState
    blocking_enabled: bool = True
    outbox_depth: Counter
    outbox_evicted: Counter = Field(default=0, description="events lost: outbox full, or the disk was")
    outbox_snapshots_dropped: Counter = Field(default=0, description="snapshots dropped to keep the events")
    model_id: str = Field(max_length=128)
    shadow_model_id: str | None = Field(default=None, max_length=128, description="candidate run in shadow")
    # The shadow model's frames since start-up: run, and skipped because the frame budget had no room for it
    # (a candidate as heavy as the active model on a busy board is skipped on most frames: its agreement
    # figures then rest on few frames). Both 0 without a shadow model.
    shadow_runs: Counter = Field(default=0, description="frames the shadow model ran on")
    shadow_skipped_budget: Counter = Field(default=0, description="frames the shadow model skipped for the budget")
    # Event clips since start-up (contract/clips.py): uploaded whole, and lost on the unit (the writer was busy,
    # the folder's size cap evicted it, or it could not be read back).
    clips_uploaded: Counter = Field(default=0, description="event clips the broker acknowledged whole")
    clips_lost: Counter = Field(default=0, description="event clips dropped, evicted or unreadable on the unit")
    software: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=128)
    building: str | None = Field(default=None, max_length=128)
    elevator: str | None = Field(default=None, max_length=128)


class StatusPayload(_Strict):
    """`status` topic, retained. The LWT carries state=offline."""

    state: Literal["online", "offline", "stopped"]
    ts: Timestamp | None = None
    software: str | None = Field(default=None, max_length=64)
    model_id: str | None = Field(default=None, max_length=128)
    site: str | None = Field(default=None, max_length=128)
    building: str | None = Field(default=None, max_length=128)
    elevator: str | None = Field(default=None, max_length=128)


CommandName = Literal["release", "enable", "disable", "test_alarm", "snapshot", "set_config", "model"]


class CommandPayload(_Strict):
    """`cmd/{name}` topic, QoS 1, sent by the fleet."""

    command_id: str = Field(min_length=8, max_length=64)
    ts: Timestamp | None = None
    args: JsonObject = Field(default_factory=dict)


class CommandResultPayload(_Strict):
    """`cmd_result` topic, QoS 1: the unit's answer to one command."""

    command_id: str = Field(min_length=1, max_length=64)
    command: str = Field(max_length=32)
    ok: bool
    detail: str = Field(default="", max_length=512)
    ts: Timestamp


def encode(payload: BaseModel) -> bytes:
    return payload.model_dump_json(exclude_none=True).encode()


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], raw: bytes) -> M:
    """Parse untrusted bytes into `model`; every failure becomes a PayloadError with the reason.

    Fast path: pydantic's own JSON parser (`model_validate_json`, ~4x cheaper than json.loads with the
    bounds hooks plus `model_validate`); the models' bounds refuse what the hooks refuse (non-finite
    numbers, integers beyond 2**53; an absurd literal is "out of range" to the parser). Anything it
    refuses goes through the exact path below, so a refusal reads the same either way."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload too large ({len(raw)} bytes)")
    if b"\\u0000" in raw:
        # A NUL character: PostgreSQL cannot store it in text, and no unit has a reason to send one.
        raise PayloadError(f"{model.__name__}: NUL character (\\u0000) refused")
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    return _decode_exact(model, raw)


def _decode_exact(model: type[M], raw: bytes) -> M:
    try:
        data = json.loads(raw, parse_constant=refuse_constant, parse_int=bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    except ValueError as exc:  # Infinity/NaN, an absurdly long integer (contract/bounds.py)
        raise PayloadError(f"{model.__name__}: {exc}") from None
    except RecursionError:
        raise PayloadError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError("payload is not a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise PayloadError(f"{model.__name__}.{where}: {first['msg']}") from None
