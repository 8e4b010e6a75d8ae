"""The clip format and its upload framing (contract/clips.py): what the fleet accepts from a unit."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import cv2
import numpy as np
import pytest

from contract.clips import (
    CLIP_CHUNK_BYTES,
    MAX_CLIP_BYTES,
    decode_chunk,
    encode_chunk,
    jpeg_size,
    read_clip,
)
from contract.errors import PayloadError
from contract.model_format import TRAINING_CLASSES
from tests.support.clips import clip_zip


def test_a_clip_reads_back_with_its_frames_in_order() -> None:
    clip_id, data = clip_zip("lift-1", "incident-1", frames=5)
    manifest, frames = read_clip(data)
    assert manifest.clip_id == clip_id and manifest.incident_id == "incident-1"
    assert [f.t for f in manifest.frames] == [-0.2, -0.1, 0.0, 0.1, 0.2]
    assert manifest.key_frame() == 2  # the first frame at or after the trigger
    assert len(frames) == 5 and all(f.startswith(b"\xff\xd8\xff") for f in frames)
    assert jpeg_size(frames[0]) == (320, 180)


def rezip(data: bytes, change: str) -> bytes:
    """The clip with one thing wrong in it."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            body = src.read(info)
            if change == "missing_frame" and info.filename == "frames/001.jpg":
                continue
            if change == "not_jpeg" and info.filename == "frames/001.jpg":
                body = b"GIF89a" + body
            if change == "bad_json" and info.filename == "clip.json":
                meta = json.loads(body)
                meta["frames"][0]["detections"][0]["score"] = 7
                body = json.dumps(meta).encode()
            if change == "nan" and info.filename == "clip.json":
                body = body.replace(b'"t":-0.2', b'"t":NaN')
            zf.writestr(info.filename, body,
                        compress_type=zipfile.ZIP_DEFLATED if change == "compressed" else zipfile.ZIP_STORED)
        if change == "extra_member":
            zf.writestr("../../etc/passwd", b"x")
    return out.getvalue()


@pytest.mark.parametrize(("change", "why"), [
    ("missing_frame", "missing or not a JPEG"), ("not_jpeg", "missing or not a JPEG"), ("bad_json", "clip.json"),
    ("nan", "clip.json"), ("compressed", "compressed"), ("extra_member", "unexpected clip member"),
])
def test_anything_that_is_not_exactly_a_clip_is_refused(change: str, why: str) -> None:
    _, data = clip_zip("lift-1", "incident-1", frames=3)
    with pytest.raises(PayloadError, match=why):
        read_clip(rezip(data, change))


@pytest.mark.parametrize("junk", [b"", b"PK\x03\x04 torn", b"\x00" * 100, b"x" * (MAX_CLIP_BYTES + 1)])
def test_junk_is_refused_with_a_clear_error(junk: bytes) -> None:
    with pytest.raises(PayloadError):
        read_clip(junk)


def test_chunks_carry_the_sha_index_and_count() -> None:
    sha = hashlib.sha256(b"clip").hexdigest()
    frame = encode_chunk(sha, 2, 5, b"x" * CLIP_CHUNK_BYTES)
    assert decode_chunk(frame) == (sha, 2, 5, b"x" * CLIP_CHUNK_BYTES)
    for bad in (encode_chunk(sha, 5, 5, b"x"),  # index beyond the count
                encode_chunk(sha, 0, 5, b"x" * (CLIP_CHUNK_BYTES + 1)),  # over the chunk size
                encode_chunk(sha, 0, 5, b""),  # nothing in it
                encode_chunk(sha, 0, MAX_CLIP_BYTES // CLIP_CHUNK_BYTES + 1, b"x"),  # a clip over the size cap
                b"LGM1" + frame[4:]):  # a model chunk's magic
        with pytest.raises(PayloadError):
            decode_chunk(bad)


@pytest.mark.parametrize("size", [(640, 360), (17, 9), (1, 1)])
def test_jpeg_size_reads_the_frame_header(size: tuple[int, int]) -> None:
    w, h = size
    ok, jpeg = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))
    assert ok
    assert jpeg_size(jpeg.tobytes()) == (w, h)
    with pytest.raises(PayloadError):
        jpeg_size(b"\xff\xd8\xff\xe0" + b"\x00" * 30)


def test_the_training_classes_are_the_trainers() -> None:
    from fleet.store.clips import OBJECT_CLASSES
    from tools.corpus import CLASSES as corpus_classes
    from tools.model import CLASSES as model_classes

    assert TRAINING_CLASSES == tuple(corpus_classes) == tuple(model_classes)
    assert (*TRAINING_CLASSES, "none") == OBJECT_CLASSES  # what a manager may correct an object to
