"""Capture: frames from a V4L2 device, an RTSP stream, a video file or a folder of images.

`Camera` owns the camera state (starting/online/offline/frozen): reads with timeouts, reconnects
with bounded exponential backoff, and flags a frozen picture (a stuck encoder or a covered lens
that still delivers identical frames). The policy never holds the door unless the state is online.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from contract.errors import CameraError
from edge.config import CameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
ImageBGR = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Frame:
    index: int
    ts: float  # seconds on the decision clock: time.monotonic when live, clip time (index / fps) in replay
    image: ImageBGR
    repeat: bool = False  # identical to the previous frame (a frozen camera): never evidence


class CameraState(StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    FROZEN = "frozen"


class RawReader(Protocol):
    """One opened source. `read` returns None on a failed read; `ended` is True at end of file;
    `live` sources (cameras, streams) may be read faster than processed, recordings may not."""

    ended: bool
    live: bool

    def read(self) -> ImageBGR | None: ...

    def close(self) -> None: ...


class CvReader:
    def __init__(self, cap: cv2.VideoCapture, finite: bool) -> None:
        self.cap = cap
        self.finite = finite
        self.live = not finite
        self.ended = False

    @property
    def fps(self) -> float:
        return float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> ImageBGR | None:
        ok, image = self.cap.read()
        if not ok or image is None:
            self.ended = self.finite
            return None
        return np.asarray(image, dtype=np.uint8)

    def close(self) -> None:
        self.cap.release()


class FolderReader:
    """Images of a folder in name order (a recorded sequence)."""

    MAX_SKIPS_PER_READ = 8  # unreadable files skipped in one read before it reports a failed read

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise CameraError(f"cannot list frame folder {folder}: {exc.strerror}") from None
        if not self.paths:
            raise CameraError(f"no images in {folder}")
        self._next = 0
        self.ended = False
        self.live = False

    def read(self) -> ImageBGR | None:
        """The next readable image; None after a few unreadable ones (a failed read, not the end).
        Raises CameraError when the folder itself is gone (the camera is lost, not the recording over)."""
        for _ in range(self.MAX_SKIPS_PER_READ):
            if self._next >= len(self.paths):
                self.ended = True
                return None
            path = self.paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return np.asarray(image, dtype=np.uint8)
            if not self.folder.is_dir():
                raise CameraError(f"frame folder {self.folder} is gone")
            log.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        pass


class LatestFrameReader:
    """A live source read by its own thread, keeping only the newest frame and when it arrived.

    The frame loop always gets the newest picture: when detection is slower than the camera, the
    frames in between are skipped (`dropped`) instead of queueing up in the driver or the RTSP
    buffer, where they would make every decision late. `captured_at` is the arrival time of the
    frame last returned (the Camera stamps frames with it, so a stale one can be recognised)."""

    live = True

    def __init__(self, inner: RawReader, clock: Callable[[], float] = time.monotonic,
                 wait_s: float = 0.1) -> None:
        self.inner = inner
        self.clock = clock
        self.wait_s = wait_s
        self.ended = False
        self.dropped = 0
        self.captured_at: float | None = None
        self._cond = threading.Condition()
        self._latest: tuple[ImageBGR, float] | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-grabber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                image = self.inner.read()
            except Exception as exc:  # handed to the frame loop, which marks the camera offline
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            if image is None:
                if self.inner.ended:
                    with self._cond:
                        self.ended = True
                        self._cond.notify_all()
                    return
                self._stop.wait(0.01)  # a failed read: do not spin
                continue
            with self._cond:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = (image, self.clock())
                self._cond.notify_all()

    def read(self) -> ImageBGR | None:
        """The newest frame not yet returned, waiting up to `wait_s`; None if none arrived."""
        with self._cond:
            if self._latest is None and self._error is None and not self.ended:
                self._cond.wait(self.wait_s)
            if self._error is not None:
                error, self._error = self._error, None
                raise CameraError(f"camera read failed: {error}")
            if self._latest is None:
                return None
            (image, self.captured_at), self._latest = self._latest, None
            return image

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():  # stuck in a driver read: releasing under it could crash OpenCV
            log.warning("camera grabber still blocked in a read; leaving the source to the process exit")
            return
        self.inner.close()


def open_source(cfg: CameraConfig) -> RawReader:
    """Open what `camera.source` names; raises CameraError with the reason."""
    source = cfg.source
    path = Path(source)
    if path.is_dir():
        return FolderReader(path)
    if source.isdigit() or source.startswith("/dev/video"):
        index: int | str = int(source) if source.isdigit() else source
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a backlog
        finite = False
    elif source.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        finite = False
    else:
        if not path.is_file():
            raise CameraError(f"camera source not found: {source}")
        cap = cv2.VideoCapture(source)
        finite = not cfg.loop
    if not cap.isOpened():
        cap.release()
        raise CameraError(f"cannot open camera source {source!r}")
    reader = CvReader(cap, finite)
    return LatestFrameReader(reader) if reader.live else reader


def grab_one(cfg: CameraConfig, warmup_frames: int = 5) -> ImageBGR | None:
    """One frame from `cfg.source`, opened as the service opens it (open_source), or None.

    Live sources skip `warmup_frames` (auto-exposure settles); files and folders give their first frame."""
    try:
        reader = open_source(cfg)
    except CameraError as exc:
        log.info("no frame from %s: %s", cfg.source, exc)
        return None
    try:
        frame = None
        for _ in range(warmup_frames + 1 if reader.live else 1):
            candidate = reader.read()
            if candidate is None:
                break
            frame = candidate
        return frame if frame is not None and frame.size else None
    finally:
        reader.close()


def source_fps(reader: RawReader, default: float) -> float:
    fps = reader.fps if isinstance(reader, CvReader) else 0.0
    return fps if 1.0 <= fps <= 120.0 else default


class FrozenDetector:
    """Identical frames (mean absolute difference of the grey frames) for `after_s` = frozen.

    `repeat` says whether the last frame was identical to the one before: such a frame is never
    evidence for a hold (the pipeline skips it), whatever `after_s` is."""

    def __init__(self, after_s: float, max_diff: float) -> None:
        self.after_s = after_s
        self.max_diff = max_diff
        self.repeat = False
        self._last: npt.NDArray[np.int16] | None = None
        self._same_since: float | None = None

    def update(self, image: ImageBGR, now: float) -> bool:
        # Full resolution, not a thumbnail: averaging would smooth a live sensor's noise away and make a
        # still scene (an e-bike parked in the car) look like a frozen camera. A stuck encoder repeats
        # its buffer: a difference of (almost) exactly zero.
        current = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.int16)
        self.repeat = (self._last is not None and current.shape == self._last.shape
                       and float(np.abs(current - self._last).mean()) <= self.max_diff)
        if self.repeat:
            if self._same_since is None:
                self._same_since = now
        else:
            self._same_since = None
        self._last = current
        return self._same_since is not None and now - self._same_since >= self.after_s


class Camera:
    """A source that comes back: reconnects with backoff, reports its state, never raises on read."""

    def __init__(self, cfg: CameraConfig, opener: Callable[[], RawReader] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self._open = opener or (lambda: open_source(cfg))
        self.clock = clock
        self.sleep = sleep
        self.state = CameraState.STARTING
        self.reader: RawReader | None = None
        self.frozen = FrozenDetector(cfg.frozen_after_s, cfg.frozen_max_diff)
        self.backoff_s = cfg.reconnect_min_s
        self._retry_at = 0.0
        self._last_frame_at: float | None = None
        self._index = 0
        self.ended = False
        self.reconnects = 0

    def _set_state(self, state: CameraState, why: str = "") -> None:
        if state == self.state:
            return
        if state in (CameraState.OFFLINE, CameraState.FROZEN):
            log.warning("camera %s: %s", state.value, why)
        else:
            log.info("camera %s", state.value)
        self.state = state

    def open(self) -> bool:
        try:
            self.reader = self._open()
        except CameraError as exc:
            self._fail(str(exc))
            return False
        self.backoff_s = self.cfg.reconnect_min_s
        self._last_frame_at = self.clock()
        return True

    def _fail(self, why: str) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self._set_state(CameraState.OFFLINE, why)
        self._retry_at = self.clock() + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.cfg.reconnect_max_s)
        self.reconnects += 1

    def read(self) -> Frame | None:
        """The next frame, or None (offline: the caller keeps ticking the policy)."""
        now = self.clock()
        if self.reader is None:
            if now < self._retry_at:
                self.sleep(min(0.1, self._retry_at - now))
                return None
            if not self.open():
                return None
        assert self.reader is not None
        try:
            image = self.reader.read()
        except (CameraError, OSError, cv2.error) as exc:  # the source is lost: offline, retry with backoff
            self._fail(str(exc))
            return None
        now = self.clock()
        if image is None:
            if self.reader.ended:
                self.ended = True
                return None
            if self._last_frame_at is not None and now - self._last_frame_at >= self.cfg.read_timeout_s:
                self._fail(f"no frame for {now - self._last_frame_at:.1f} s")
            return None
        self._last_frame_at = now
        captured = getattr(self.reader, "captured_at", None)
        if isinstance(captured, float) and captured <= now:
            now = captured  # a grabbed frame is as old as its arrival, not as its hand-over
        frozen = self.frozen.update(image, now)
        self._set_state(CameraState.FROZEN if frozen else CameraState.ONLINE,
                        f"identical frames for {self.cfg.frozen_after_s:g} s" if frozen else "")
        frame = Frame(self._index, now, image, repeat=self.frozen.repeat)
        self._index += 1
        return frame

    def reconfigure(self, cfg: CameraConfig) -> None:
        """Live config (fleet): rate, timeouts, backoff and frozen detection apply from the next read;
        the source itself is provisioned, never pushed."""
        if cfg.source != self.cfg.source:
            raise CameraError("camera.source cannot be changed live")
        self.cfg = cfg
        self.frozen.after_s = cfg.frozen_after_s
        self.frozen.max_diff = cfg.frozen_max_diff
        self.backoff_s = min(max(self.backoff_s, cfg.reconnect_min_s), cfg.reconnect_max_s)

    @property
    def live(self) -> bool:
        return self.reader.live if self.reader is not None else True

    @property
    def ok(self) -> bool:
        return self.state == CameraState.ONLINE

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
