"""Event clips for tests: a clip's zip as a unit writes it (contract/clips.py), and its upload chunks."""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from collections.abc import Sequence

import cv2
import numpy as np

from contract.clips import CLIP_CHUNK_BYTES, ClipDetection, ClipFrame, ClipManifest, encode_chunk

EBIKE_BOX = (40.0, 30.0, 200.0, 160.0)


def clip_zip(unit_id: str, incident_id: str | None, frames: int = 6, size: tuple[int, int] = (320, 180),
             reason: str = "hold", clip_id: str | None = None,
             detections: Sequence[ClipDetection] | None = None) -> tuple[str, bytes]:
    """(clip id, zip bytes): `frames` frames from -0.2 s on at 10 fps, each with `detections` (default: one
    e-bike box), numbered and textured so each JPEG differs."""
    clip_id = clip_id or uuid.uuid4().hex
    dets = list(detections) if detections is not None else [ClipDetection(cls="ebike", score=0.9, box=EBIKE_BOX)]
    w, h = size
    buf = io.BytesIO()
    meta = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(frames):
            img = np.full((h, w, 3), (40 + 10 * i) % 256, np.uint8)
            cv2.putText(img, f"frame {i}", (10, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
            ok, jpeg = cv2.imencode(".jpg", img)
            assert ok
            name = f"frames/{i:03d}.jpg"
            zf.writestr(name, jpeg.tobytes())
            meta.append(ClipFrame(file=name, t=round((i - 2) / 10, 3), detections=dets))
        zf.writestr("clip.json", ClipManifest(clip_id=clip_id, unit_id=unit_id, reason=reason,  # type: ignore[arg-type]
                                              incident_id=incident_id, trigger_ts=1000.0,
                                              frames=meta).model_dump_json())
    return clip_id, buf.getvalue()


def chunks(data: bytes, sha256: str | None = None) -> list[bytes]:
    """The `clips/{id}` payloads of a clip (what the unit's uploader publishes), optionally naming another sha."""
    sha = sha256 or hashlib.sha256(data).hexdigest()
    parts = [data[i:i + CLIP_CHUNK_BYTES] for i in range(0, len(data), CLIP_CHUNK_BYTES)]
    return [encode_chunk(sha, i, len(parts), p) for i, p in enumerate(parts)]
