"""Model rollout over MQTT (issue 17): the `model` command, the chunks that carry the file, and
the unit's retained `model/reported`. Documented in docs/ARCHITECTURE.md §3 and docs/IMPROVING_THE_MODEL.md.

Transport decision: MQTT chunks, not HTTPS. The unit already holds one authenticated TLS session to
the broker, whose ACL confines it to its own subtree; the model travels in that session, so there is
no second endpoint, port, certificate check or firewall rule, and the fleet's HTTP side never has to
accept client certificates. The cost: a unit must be online while the fleet sends (sessions are
clean, and commands older than 60 s are refused), so `liftguard-fleet models rollout` reports which
units answered and is simply run again for the others.

1. Fleet → `cmd/model` (CommandPayload, QoS 1), args = ModelArgs: model id, sha256, size, stage and
   how many chunks follow. The unit answers on `cmd_result` ("receiving"), or refuses at once.
2. Fleet → `model/data` (QoS 1, binary, in order): `encode_chunk` frames; each names the sha256 it
   belongs to, its index and the count. The unit keeps chunks only for the offer it accepted.
3. The unit checks size and sha256 of the assembled file, writes it atomically into models.dir, and
   loads it: stage `shadow` → beside the active model (never acts); `active` → load and self-check
   the new one first, then swap it in, keeping the previous; anything failing keeps (rolls back to)
   the model that was running. The outcome goes to `model/reported` (retained, ModelReportedPayload),
   and every heartbeat carries `model_id` and `shadow_model_id`. Stage `off` stops the shadow model.
"""

from __future__ import annotations

import struct
from typing import Literal

from pydantic import Field, model_validator

from contract.bounds import Timestamp
from contract.commands import CommandArgs
from contract.errors import PayloadError
from contract.onnx_header import MAX_MODEL_BYTES

CHUNK_BYTES = 512 * 1024  # under the broker's max_packet_size (2.2 MB) with room to spare
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
Stage = Literal["shadow", "active", "off"]

_MAGIC = b"LGM1"
_HEADER = struct.Struct(">4s32sII")  # magic, sha256 (raw), index, count


class ModelArgs(CommandArgs):
    """`cmd/model` args. For stage `off` only the stage matters (the other fields may be omitted)."""

    stage: Stage
    # Anchored as a whole: the id becomes part of a file name in models.dir on the unit.
    model_id: str = Field("", pattern=r"^(|[A-Za-z0-9][A-Za-z0-9_.+-]{0,127})$")
    sha256: str = Field("", pattern=r"^$|^[0-9a-f]{64}$")
    size: int = Field(0, ge=0, le=MAX_MODEL_BYTES)
    chunks: int = Field(0, ge=0, le=MAX_MODEL_BYTES // 1024)

    @model_validator(mode="after")
    def _complete(self) -> ModelArgs:
        if self.stage != "off" and not (self.model_id and self.sha256 and self.size and self.chunks):
            raise ValueError("model_id, sha256, size and chunks are required to install a model")
        if self.stage != "off" and self.chunks != -(-self.size // CHUNK_BYTES):
            raise ValueError(f"chunks must be ceil(size / {CHUNK_BYTES})")
        return self


class ModelReportedPayload(CommandArgs):
    """`model/reported`, retained, unit → fleet: what runs now and what the last rollout did."""

    ok: bool
    model_id: str = Field("", max_length=128, description="the rollout this answers")
    stage: Stage | None = None
    active: str = Field(max_length=128)
    previous: str | None = Field(None, max_length=128)
    shadow: str | None = Field(None, max_length=128)
    detail: str = Field("", max_length=512)
    ts: Timestamp


def encode_chunk(sha256: str, index: int, count: int, data: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, bytes.fromhex(sha256), index, count) + data


def decode_chunk(raw: bytes) -> tuple[str, int, int, bytes]:
    """(sha256 hex, index, count, data) of one `model/data` frame; PayloadError if it is not one."""
    if len(raw) < _HEADER.size or len(raw) > _HEADER.size + CHUNK_BYTES:
        raise PayloadError(f"model chunk of {len(raw)} bytes")
    magic, digest, index, count = _HEADER.unpack_from(raw)
    if magic != _MAGIC or not 0 <= index < count:
        raise PayloadError("not a model chunk")
    return digest.hex(), index, count, raw[_HEADER.size:]
