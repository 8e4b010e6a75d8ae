"""Faces are blurred on the device, before a snapshot leaves it.

Three levels, best available first:
1. OpenCV's bundled Haar face cascade, when this OpenCV build ships it (the 4.x wheels do;
   OpenCV 5 moved `CascadeClassifier` out of the main package).
2. The head region (top fifth, slightly widened) of every person box the detector saw.
3. Neither available (no cascade, no boxes given): the whole frame is pixelated. Failing
   closed keeps the promise "no face leaves the device" at the cost of a less useful picture.

An explicitly empty list of person boxes means "the detector saw nobody": nothing is blurred.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
PixelBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels (edge.decide.detect.Detection.box)
CASCADE_NAME = "haarcascade_frontalface_default.xml"
HEAD_FRACTION = 0.2
MOSAIC_CELLS = 8  # a blurred region keeps at most this many blocks across: no identifiable face


@overload
def blur_faces(image: bytes, person_boxes: Sequence[PixelBox] | None = None) -> bytes: ...
@overload
def blur_faces(image: Image, person_boxes: Sequence[PixelBox] | None = None) -> Image: ...


def blur_faces(image: bytes | Image, person_boxes: Sequence[PixelBox] | None = None) -> bytes | Image:
    """Blur faces in a JPEG (returns JPEG bytes) or a BGR array (returns a new array).

    Raises ValueError for bytes that are not a decodable image: nothing undecodable is sent on.
    """
    if isinstance(image, bytes | bytearray):
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError("snapshot is not a decodable image")
        blurred = _blur(np.asarray(decoded, dtype=np.uint8), person_boxes)
        ok, buf = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise ValueError("could not re-encode the blurred snapshot")
        return bytes(buf.tobytes())
    return _blur(image.copy(), person_boxes)


def _blur(img: Image, person_boxes: Sequence[PixelBox] | None) -> Image:
    regions = _face_regions(img)
    if regions is None and person_boxes is not None:
        regions = [_head_of(box, img.shape[1], img.shape[0]) for box in person_boxes]
    if regions is None:
        _warn_fail_closed()
        regions = [(0, 0, img.shape[1], img.shape[0])]
    for x1, y1, x2, y2 in regions:
        if x2 > x1 and y2 > y1:
            img[y1:y2, x1:x2] = _mosaic(img[y1:y2, x1:x2])
    return img


def _face_regions(img: Image) -> list[tuple[int, int, int, int]] | None:
    cascade = _cascade()
    if cascade is None:
        return None
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(20, 20))
    h, w = img.shape[:2]
    out = []
    for x, y, fw, fh in faces:  # widen by a quarter: the cascade box is tight around the eyes
        dx, dy = fw // 4, fh // 4
        out.append((max(0, x - dx), max(0, y - dy), min(w, x + fw + dx), min(h, y + fh + dy)))
    return out


def _head_of(box: PixelBox, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    pad = (x2 - x1) * 0.1
    bottom = y1 + (y2 - y1) * HEAD_FRACTION
    return (max(0, int(x1 - pad)), max(0, int(y1)), min(width, int(x2 + pad) + 1), min(height, int(bottom) + 1))


def _mosaic(region: Image) -> Image:
    h, w = region.shape[:2]
    cell = max(1, max(h, w) // MOSAIC_CELLS)
    small = cv2.resize(region, (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)


@functools.cache
def _cascade() -> Any | None:
    path = cascade_path()
    factory = getattr(cv2, "CascadeClassifier", None)
    if path is None or factory is None:
        log.info("no Haar face cascade in this OpenCV build; blurring person heads instead")
        return None
    cascade = factory(str(path))
    return None if cascade.empty() else cascade


def cascade_path() -> Path | None:
    """The bundled frontal-face cascade: `cv2.data.haarcascades`, else searched in the cv2 package."""
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if folder and (Path(folder) / CASCADE_NAME).is_file():
        return Path(folder) / CASCADE_NAME
    package = Path(cv2.__file__).parent
    return next(iter(package.rglob(CASCADE_NAME)), None)


@functools.cache
def _warn_fail_closed() -> None:
    log.warning("no face detector and no person boxes: snapshots are pixelated whole (fail closed)")
