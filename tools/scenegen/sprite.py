"""A sprite is an object image with its own alpha, drawn or cut out, ready to be pasted into a scene."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Rng = np.random.Generator
Color = tuple[int, int, int]


@dataclass
class Sprite:
    bgra: np.ndarray  # uint8 H x W x 4; alpha 0 = transparent
    cls: int  # LiftGuard class id, or -1 for unlabelled clutter
    origin: str = ""  # source group of the real photo a cut-out came from ("" when drawn)

    @property
    def alpha(self) -> np.ndarray:
        return self.bgra[:, :, 3]

    def trimmed(self) -> Sprite:
        """Crop to the non-transparent area (drawing canvases are generous)."""
        ys, xs = np.nonzero(self.alpha > 0)
        if len(xs) == 0:
            return self
        return Sprite(self.bgra[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].copy(), self.cls)

    def scaled(self, factor: float) -> Sprite:
        h, w = self.bgra.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        return Sprite(cv2.resize(self.bgra, size, interpolation=interp), self.cls)

    def resized(self, width: int, height: int) -> Sprite:
        return Sprite(cv2.resize(self.bgra, (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA), self.cls)

    def rotated(self, degrees: float) -> Sprite:
        """Rotate about the centre on a canvas large enough to hold every corner."""
        h, w = self.bgra.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * sin + w * cos) + 2, int(h * cos + w * sin) + 2
        m[0, 2] += nw / 2 - w / 2
        m[1, 2] += nh / 2 - h / 2
        out = cv2.warpAffine(self.bgra, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
        return Sprite(out, self.cls)

    def flipped(self) -> Sprite:
        return Sprite(np.ascontiguousarray(self.bgra[:, ::-1]), self.cls)


def canvas(width_m: float, height_m: float, ppm: float) -> np.ndarray:
    return np.zeros((max(2, int(height_m * ppm)), max(2, int(width_m * ppm)), 4), np.uint8)


def rgba(color: Color) -> tuple[int, int, int, int]:
    return (int(color[0]), int(color[1]), int(color[2]), 255)


def jitter(rng: Rng, color: Color, amount: int = 20) -> Color:
    c = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def shade(color: Color, factor: float) -> Color:
    c = np.clip(np.asarray(color, float) * factor, 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


# Palettes (BGR) seen on Chinese e-bikes, clothes, wheelchairs, prams.
VEHICLE_COLORS: tuple[Color, ...] = (
    (30, 30, 30), (235, 235, 235), (40, 40, 200), (200, 120, 30), (60, 160, 230), (90, 90, 90),
    (170, 200, 120), (160, 60, 160), (40, 180, 240), (130, 130, 200), (200, 200, 120), (60, 120, 60),
)
# Stand-up e-scooters come in few colours: black, silver, grey, blue.
SCOOTER_COLORS: tuple[Color, ...] = ((30, 30, 30), (200, 200, 200), (60, 60, 60), (40, 40, 160))
CLOTHES: tuple[Color, ...] = (
    (40, 40, 40), (200, 200, 200), (140, 60, 20), (40, 40, 160), (60, 120, 60), (30, 90, 160),
    (120, 120, 120), (180, 140, 200), (20, 60, 90), (220, 180, 120), (90, 30, 90), (30, 160, 200),
)
HAIR: tuple[Color, ...] = ((20, 20, 25), (30, 35, 50), (60, 70, 90), (170, 170, 175), (40, 50, 70))
SKIN: tuple[Color, ...] = ((150, 180, 220), (120, 150, 200), (90, 120, 170), (170, 195, 230))


def pick(rng: Rng, options: tuple[Color, ...], amount: int = 15) -> Color:
    return jitter(rng, options[int(rng.integers(len(options)))], amount)
