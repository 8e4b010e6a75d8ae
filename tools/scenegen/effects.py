"""Camera and CCTV artefacts: light level, IR night mode, blur, noise, burned-in text, JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from tools.scenegen.sprite import Rng


def lighting(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Global gain/gamma plus a ceiling-light falloff and a colour cast."""
    h, w = img.shape[:2]
    gain = rng.uniform(0.35, 1.25)
    ys, xs = np.ogrid[0:h, 0:w]
    lx, ly = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.6) * h
    falloff = 1.0 - rng.uniform(0.1, 0.5) * (((xs - lx) ** 2 + (ys - ly) ** 2) / (w * w + h * h)) * 2
    cast = 1.0 + rng.uniform(-0.08, 0.08, 3)
    out = img.astype(np.float32) * (gain * falloff)[:, :, None].astype(np.float32) * cast.astype(np.float32)
    result: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return result


def infrared(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Night IR: grayscale, washed-out, a bright IR-lamp hotspot."""
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gray = gray * rng.uniform(0.8, 1.3) + rng.uniform(10, 50)
    h, w = gray.shape
    ys, xs = np.ogrid[0:h, 0:w]
    hot = np.exp(-(((xs - w / 2) ** 2 + (ys - h / 2) ** 2) / (2 * (0.35 * w) ** 2))).astype(np.float32)
    gray = np.clip(gray * (0.7 + 0.5 * hot), 0, 255).astype(np.uint8)
    result: np.ndarray = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    return result


def motion_blur(rng: Rng, img: np.ndarray) -> np.ndarray:
    k = int(rng.integers(3, 9))
    kernel: np.ndarray = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    rotated = np.asarray(cv2.warpAffine(kernel, m, (k, k)), np.float32)
    rotated = rotated / max(float(rotated.sum()), 1e-6)
    result: np.ndarray = cv2.filter2D(img, -1, rotated)
    return result


def sensor_noise(rng: Rng, img: np.ndarray, sigma: float) -> np.ndarray:
    noise = rng.normal(0, sigma, img.shape[:2]).astype(np.float32)[:, :, None]
    result: np.ndarray = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return result


def timestamp_overlay(rng: Rng, img: np.ndarray, frame_seconds: float | None = None) -> None:
    """Burn in a CCTV timestamp and camera name, in place (top-left or bottom)."""
    h, w = img.shape[:2]
    base = int(rng.integers(1_600_000_000, 1_760_000_000))
    t = base + int(frame_seconds or 0)
    day, sec = divmod(t, 86400)
    year = 2020 + day // 365 % 6
    month, mday = 1 + day // 31 % 12, 1 + day % 28
    text = f"{year:04d}-{month:02d}-{mday:02d} {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
    scale = w / 640 * rng.uniform(0.5, 0.8)
    color = (255, 255, 255) if rng.random() < 0.8 else (0, 255, 255)
    y = int(22 * scale / 0.6) if rng.random() < 0.7 else h - 10
    cv2.putText(img, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    if rng.random() < 0.6:
        label = f"CAM{int(rng.integers(1, 40)):02d} LIFT-{'ABCDEF'[int(rng.integers(6))]}"
        cv2.putText(img, label, (w - int(170 * scale / 0.6), h - 12), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1,
                    cv2.LINE_AA)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return img
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return decoded if decoded is not None else img
