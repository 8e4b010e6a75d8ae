"""Procedural surface textures for elevator cars: steel, paint, floor patterns, posters.

Noise is generated small and upscaled: it looks like material grain and costs little, which keeps
the generator above ~20 images/s on one core.
"""

from __future__ import annotations

import cv2
import numpy as np

from tools.scenegen.sprite import Color, Rng, jitter, shade


def _noise(rng: Rng, w: int, h: int, cell: int, amp: float) -> np.ndarray:
    small = rng.normal(0, amp, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def brushed_steel(rng: Rng, w: int, h: int) -> np.ndarray:
    base = rng.uniform(120, 200)
    streaks: np.ndarray = rng.normal(0, 14, (h, max(2, w // 24))).astype(np.float32)
    streaks = cv2.resize(streaks, (w, h), interpolation=cv2.INTER_LINEAR)  # long horizontal grain
    if rng.random() < 0.5:
        streaks = cv2.resize(rng.normal(0, 14, (max(2, h // 24), w)).astype(np.float32), (w, h))
    grad = np.linspace(rng.uniform(-25, 10), rng.uniform(-10, 25), h, dtype=np.float32)[:, None]
    gray = np.clip(base + streaks + grad, 0, 255)
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.04, 0.04, 3)
    result: np.ndarray = np.clip(gray[:, :, None] * tint[None, None, :], 0, 255).astype(np.uint8)
    return result


def painted(rng: Rng, w: int, h: int) -> np.ndarray:
    palette: tuple[Color, ...] = ((200, 205, 210), (170, 190, 200), (150, 160, 140), (120, 130, 150),
                                  (210, 220, 225), (90, 100, 110), (180, 170, 150), (60, 70, 80))
    color = jitter(rng, palette[int(rng.integers(len(palette)))], 15)
    img = np.empty((h, w, 3), np.float32)
    img[:] = color
    img += _noise(rng, w, h, 16, 6)[:, :, None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:  # panel seams
        n = int(rng.integers(2, 5))
        for k in range(1, n):
            x = k * w // n
            cv2.line(out, (x, 0), (x, h), shade(color, 0.6), max(1, w // 200))
    return out


def wall(rng: Rng, w: int, h: int) -> np.ndarray:
    kind = rng.random()
    if kind < 0.55:
        return brushed_steel(rng, w, h)
    if kind < 0.85:
        return painted(rng, w, h)
    # Mirror-like dark glossy panel with a blurred reflection band.
    img: np.ndarray = np.full((h, w, 3), rng.uniform(40, 80), np.float32)
    x = int(rng.integers(0, w))
    cv2.rectangle(img, (x, 0), (x + w // 6, h), (150, 150, 150), -1)
    img = cv2.GaussianBlur(img, (0, 0), w / 25)
    return np.clip(img, 0, 255).astype(np.uint8)


def floor(rng: Rng, w: int, h: int, ppm: float) -> np.ndarray:
    kind = int(rng.integers(5))
    c1 = jitter(rng, ((60, 60, 60), (120, 120, 125), (40, 50, 60), (150, 140, 130), (90, 80, 70))[kind], 20)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = c1
    if kind == 0:  # rubber studs
        step = max(4, int(rng.uniform(0.04, 0.07) * ppm))
        stud = shade(c1, rng.uniform(0.6, 1.5))
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                cv2.circle(img, (x, y), max(1, step // 4), stud, -1)
    elif kind in (1, 3):  # tiles / stone with grout
        tile = max(8, int(rng.uniform(0.2, 0.5) * ppm))
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                img[ty:ty + tile, tx:tx + tile] = jitter(rng, c1, 12)
        grout = shade(c1, 0.5)
        for y in range(0, h, tile):
            cv2.line(img, (0, y), (w, y), grout, max(1, tile // 25))
        for x in range(0, w, tile):
            cv2.line(img, (x, 0), (x, h), grout, max(1, tile // 25))
    elif kind == 2:  # checker
        tile = max(8, int(rng.uniform(0.15, 0.35) * ppm))
        c2 = jitter(rng, (200, 200, 200) if rng.random() < 0.5 else (30, 30, 30), 20)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                if (ty // tile + tx // tile) % 2:
                    img[ty:ty + tile, tx:tx + tile] = c2
    else:  # planks / vinyl
        plank = max(6, int(rng.uniform(0.1, 0.2) * ppm))
        for y in range(0, h, plank):
            img[y:y + plank] = jitter(rng, c1, 15)
            cv2.line(img, (0, y), (w, y), shade(c1, 0.6), 1)
    grain = _noise(rng, w, h, 6, rng.uniform(3, 10))
    result: np.ndarray = np.clip(img.astype(np.float32) + grain[:, :, None], 0, 255).astype(np.uint8)
    return result


def poster(rng: Rng, w: int, h: int) -> np.ndarray:
    """An ad / notice: coloured blocks, a title bar, fake text lines."""
    options = ((240, 240, 240), (40, 40, 160), (160, 60, 20), (30, 160, 220), (40, 40, 40))
    bg = jitter(rng, options[int(rng.integers(len(options)))])
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    for _ in range(int(rng.integers(1, 4))):
        x1, y1 = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = jitter(rng, (128, 128, 128), 120)
        cv2.rectangle(img, (x1, y1), (x1 + int(rng.integers(w // 5, w)), y1 + int(rng.integers(h // 8, h // 2))),
                      color, -1)
    fg = (255 - bg[0], 255 - bg[1], 255 - bg[2])
    for k in range(int(rng.integers(2, 6))):
        y = int(h * (0.15 + 0.15 * k))
        if y < h:
            cv2.line(img, (w // 10, y), (w // 10 + int(rng.integers(w // 4, w * 8 // 10)), y), fg, max(1, h // 40))
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), shade(bg, 0.5), max(1, w // 60))
    return img
