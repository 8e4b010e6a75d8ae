"""Faces are blurred before a snapshot leaves the device; with no face detector we fail closed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.see import privacy


@pytest.fixture(autouse=True)
def no_face_cascade(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same behaviour whatever the OpenCV build: OpenCV 5 wheels ship no Haar cascade at all."""
    monkeypatch.setattr(privacy, "_cascade", lambda: None)


def checkerboard(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.repeat(((yy // 4 + xx // 4) % 2 * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def test_the_head_fifth_of_each_person_box_is_pixelated_and_nothing_else() -> None:
    frame = checkerboard()
    out = privacy.blur_faces(frame, [(20, 10, 70, 110)])
    head, body, elsewhere = np.s_[12:28, 20:70], np.s_[40:110, 20:70], np.s_[:, 100:]
    assert out[head].std() < frame[head].std() / 3
    assert np.array_equal(out[body], frame[body])
    assert np.array_equal(out[elsewhere], frame[elsewhere])
    assert np.array_equal(frame, checkerboard()), "the caller's frame is not modified"


def test_without_a_detector_or_boxes_the_whole_frame_is_pixelated() -> None:
    frame = checkerboard()
    out = privacy.blur_faces(frame)
    assert out.std() < frame.std() / 3


def test_an_empty_box_list_means_nobody_was_seen() -> None:
    frame = checkerboard()
    assert np.array_equal(privacy.blur_faces(frame, []), frame)


def test_jpeg_in_jpeg_out() -> None:
    jpeg = cv2.imencode(".jpg", checkerboard())[1].tobytes()
    out = privacy.blur_faces(jpeg)
    assert out[:2] == b"\xff\xd8"
    assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)


def test_bytes_that_are_not_an_image_are_refused() -> None:
    with pytest.raises(ValueError, match="not a decodable image"):
        privacy.blur_faces(b"not a jpeg")


def test_boxes_outside_the_frame_are_clipped() -> None:
    out = privacy.blur_faces(checkerboard(), [(-50, -50, 500, 500)])
    assert out.shape == (120, 160, 3)
