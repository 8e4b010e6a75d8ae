"""Event clips (issue 17): what a unit keeps around a hold, and how it reaches the fleet.

A clip is one uncompressed zip: `frames/NNN.jpg` (≤ 640 px wide, faces blurred on the unit) and
`clip.json` (ClipManifest: the trigger, and each frame's time and detections). The unit writes it to
`clips.dir` (edge/report/clips.py); the MQTT link uploads the clips of holds (edge/report/clip_upload.py).

Transport decision: MQTT chunks on `clips/{clip_id}` (up, QoS 1, not retained), in the unit's one TLS
session, the same choice as model rollouts in the other direction (contract/models.py): the broker's
ACL already confines the unit to its subtree and its rate limit already bounds it, so there is no
second endpoint or certificate check. Each frame (`encode_chunk`) names the sha256 of the whole zip,
its index and the count; the fleet keeps the parts in its database until all have arrived (parts of
one clip may reach different fleet servers on a shared subscription), then checks size, sha256 and
the zip's content, and stores the clip only if its `incident_id` names a stored alert of that unit.

The unit sends a chunk only when its event outbox is empty, one chunk in flight at a time, at most
one every `clips.upload_interval_s`: alerts always go first and a clip can never use up the unit's
broker rate limit. A clip leaves the unit's disk once every chunk was acknowledged by the broker.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.bounds import Timestamp
from contract.errors import PayloadError
from contract.mqtt import UNIT_ID_PATTERN

CLIP_CHUNK_BYTES = 64 * 1024  # an alert sent meanwhile waits behind at most one chunk (0.5 s at 1 Mbit/s)
MAX_CLIP_BYTES = 16 * 1024 * 1024  # 64 chunks: 10 s of 640 px frames at 15 fps fit with room to spare
MAX_CLIP_FRAMES = 400
CLIP_ID_PATTERN = r"^[0-9a-f]{32}$"
_CLIP_ID_RE = re.compile(CLIP_ID_PATTERN)
_FRAME_RE = re.compile(r"^frames/\d{3}\.jpg$")
_JPEG_MAGIC = b"\xff\xd8\xff"

_MAGIC = b"LGC1"
_HEADER = struct.Struct(">4s32sHH")  # magic, sha256 of the whole zip (raw), index, count


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ClipDetection(_Strict):
    cls: str = Field(max_length=32)
    score: float = Field(ge=0, le=1)
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the clip's pixels")


class ClipFrame(_Strict):
    file: str = Field(pattern=r"^frames/\d{3}\.jpg$")
    t: float = Field(ge=-60, le=60, description="seconds relative to the trigger")
    detections: list[ClipDetection] = Field(default_factory=list, max_length=100)


class ClipManifest(_Strict):
    """`clip.json` inside a clip's zip."""

    clip_id: str = Field(pattern=CLIP_ID_PATTERN)
    unit_id: str = Field(pattern=UNIT_ID_PATTERN)
    reason: Literal["hold", "near_miss"]
    incident_id: str | None = Field(None, min_length=8, max_length=64, description="the hold's incident")
    trigger_ts: Timestamp
    frames: list[ClipFrame] = Field(max_length=MAX_CLIP_FRAMES)

    def key_frame(self) -> int:
        """The frame the decision was made on: the first at or after the trigger (the last one if none is)."""
        return next((i for i, f in enumerate(self.frames) if f.t >= 0), max(0, len(self.frames) - 1))


def is_clip_id(text: str) -> bool:
    return bool(_CLIP_ID_RE.match(text))


def encode_chunk(sha256: str, index: int, count: int, data: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, bytes.fromhex(sha256), index, count) + data


def decode_chunk(raw: bytes) -> tuple[str, int, int, bytes]:
    """(sha256 hex, index, count, data) of one `clips/{id}` frame; PayloadError if it is not one."""
    if len(raw) <= _HEADER.size or len(raw) > _HEADER.size + CLIP_CHUNK_BYTES:
        raise PayloadError(f"clip chunk of {len(raw)} bytes")
    magic, digest, index, count = _HEADER.unpack_from(raw)
    if magic != _MAGIC or not 0 <= index < count or count > MAX_CLIP_BYTES // CLIP_CHUNK_BYTES:
        raise PayloadError("not a clip chunk")
    return digest.hex(), index, count, raw[_HEADER.size:]


def read_clip(data: bytes) -> tuple[ClipManifest, list[bytes]]:
    """The manifest and the JPEG of each of its frames, in order, from a clip's zip bytes. Untrusted input:
    PayloadError for anything that is not exactly a clip (other members, a frame that is not a JPEG,
    compressed members that could expand without bound)."""
    if len(data) > MAX_CLIP_BYTES:
        raise PayloadError(f"clip of {len(data)} bytes (max {MAX_CLIP_BYTES})")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_CLIP_FRAMES + 1:
                raise PayloadError(f"clip with {len(infos)} members")
            members: dict[str, bytes] = {}
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_CLIP_BYTES:
                    raise PayloadError(f"clip member {info.filename[:64]!r} is compressed or too large")
                if info.filename != "clip.json" and not _FRAME_RE.match(info.filename):
                    raise PayloadError(f"unexpected clip member {info.filename[:64]!r}")
                members[info.filename] = zf.read(info)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise PayloadError(f"not a clip: {exc}") from None
    if "clip.json" not in members:
        raise PayloadError("clip without clip.json")
    try:
        manifest = ClipManifest.model_validate(json.loads(members["clip.json"]))
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"clip.json: {str(exc)[:300]}") from None
    frames = []
    for frame in manifest.frames:
        jpeg = members.get(frame.file)
        if jpeg is None or not jpeg.startswith(_JPEG_MAGIC):
            raise PayloadError(f"clip frame {frame.file} is missing or not a JPEG")
        frames.append(jpeg)
    return manifest, frames


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding it (the fleet has no image library)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise PayloadError("JPEG marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            if width and height:
                return width, height
            break
        i += 2 + length
    raise PayloadError("no JPEG frame header with a size")
