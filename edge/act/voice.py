"""The voice warning: a generated chime or the site's recorded message, played through ALSA."""

from __future__ import annotations

import logging
import math
import shutil
import struct
import subprocess
import tempfile
import threading
import wave
from pathlib import Path

from edge.config import VoiceConfig

log = logging.getLogger(__name__)


def write_warning_chime(path: Path, seconds: float = 1.6, rate: int = 16000) -> Path:
    """A two-tone warning chime, generated so that no third-party audio is bundled.

    Sites replace it with a recorded spoken message (voice.wav_path)."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        freq = 880.0 if (t % 0.8) < 0.4 else 660.0
        envelope = min(1.0, (t % 0.4) * 20) * min(1.0, (0.4 - t % 0.4) * 20)
        frames += struct.pack("<h", int(12000 * envelope * math.sin(2 * math.pi * freq * t)))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path


class AlsaVoice:
    """Plays a WAV with `aplay` every repeat_s while the alarm is on, from its own thread."""

    def __init__(self, cfg: VoiceConfig) -> None:
        self.cfg = cfg
        self._aplay = shutil.which("aplay")
        if cfg.wav_path:
            self._wav = Path(cfg.wav_path)
        else:
            self._wav = write_warning_chime(Path(tempfile.gettempdir()) / "liftguard-warning.wav")
        if self._aplay is None:
            log.warning("aplay not found: the voice warning will only be logged")
        self._on = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="voice", daemon=True)
        self._thread.start()

    def set(self, on: bool) -> None:
        if on:
            self._on.set()
        else:
            self._on.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._on.wait(timeout=0.2):
                continue
            if self._aplay:
                try:
                    subprocess.run([self._aplay, "-q", "-D", self.cfg.alsa_device, str(self._wav)],
                                   timeout=30, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    log.warning("voice playback failed: %s", exc)
            self._stop.wait(self.cfg.repeat_s)

    def close(self) -> None:
        self._on.clear()
        self._stop.set()
