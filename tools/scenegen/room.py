"""An elevator car: its size, surfaces (with door, handrail, posters) and how to render it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tools.scenegen import textures
from tools.scenegen.camera import Camera, warp_plane
from tools.scenegen.sprite import Rng, jitter, shade

TEX_PPM = 120.0  # texture resolution, pixels per metre


@dataclass
class Car:
    width: float  # x extent, metres
    depth: float  # y extent; the door is in the wall y = 0
    height: float
    floor_tex: np.ndarray
    walls: dict[str, np.ndarray]  # "door" (y=0), "back" (y=depth), "left" (x=0), "right" (x=width)
    ceiling: tuple[int, int, int]

    def surface_corners(self, name: str, top: float | None = None) -> np.ndarray:
        """3D corners matching texture TL, TR, BR, BL, seen from inside the car; walls end at ``top``."""
        w, d, h = self.width, self.depth, self.height if top is None else top
        return {
            "floor": np.array([[0, d, 0], [w, d, 0], [w, 0, 0], [0, 0, 0]], float),
            "door": np.array([[0, 0, h], [w, 0, h], [w, 0, 0], [0, 0, 0]], float),
            "back": np.array([[w, d, h], [0, d, h], [0, d, 0], [w, d, 0]], float),
            "left": np.array([[0, d, h], [0, 0, h], [0, 0, 0], [0, d, 0]], float),
            "right": np.array([[w, 0, h], [w, d, h], [w, d, 0], [w, 0, 0]], float),
        }[name]


def _door_wall(rng: Rng, width: float, height: float) -> np.ndarray:
    w, h = int(width * TEX_PPM), int(height * TEX_PPM)
    img = textures.wall(rng, w, h)
    door_w = min(width - 0.1, rng.uniform(0.8, 1.1))
    x1 = int((width - door_w) / 2 * TEX_PPM)
    x2 = x1 + int(door_w * TEX_PPM)
    top = h - int(rng.uniform(2.0, 2.1) * TEX_PPM)
    panels = textures.brushed_steel(rng, x2 - x1, h - top)
    if rng.random() < 0.3:  # door slightly open: dark landing visible in the gap
        gap = int(rng.uniform(0.05, 0.4) * TEX_PPM)
        mid = (x2 - x1) // 2
        panels[:, mid - gap // 2: mid + gap // 2] = jitter(rng, (40, 45, 50), 20)
    img[top:, x1:x2] = panels
    cv2.line(img, ((x1 + x2) // 2, top), ((x1 + x2) // 2, h), (30, 30, 30), 2)
    cv2.rectangle(img, (x1, top), (x2, h), (70, 70, 70), 3)
    return img


def _side_wall(rng: Rng, width: float, height: float) -> np.ndarray:
    w, h = int(width * TEX_PPM), int(height * TEX_PPM)
    img = textures.wall(rng, w, h)
    if rng.random() < 0.7:  # handrail at ~0.9 m
        y = h - int(rng.uniform(0.85, 0.95) * TEX_PPM)
        rail = jitter(rng, (200, 200, 205), 30)
        cv2.line(img, (int(0.1 * TEX_PPM), y), (w - int(0.1 * TEX_PPM), y), rail, max(3, int(0.04 * TEX_PPM)))
        cv2.line(img, (int(0.1 * TEX_PPM), y + 4), (w - int(0.1 * TEX_PPM), y + 4), shade(rail, 0.5), 2)
    for _ in range(int(rng.integers(0, 3))):  # posters / ads / notices
        pw, ph = int(rng.uniform(0.3, 0.6) * TEX_PPM), int(rng.uniform(0.4, 0.8) * TEX_PPM)
        if pw >= w - 4:
            continue
        x = int(rng.integers(2, w - pw - 1))
        y = int(rng.integers(int(0.3 * TEX_PPM), max(int(0.3 * TEX_PPM) + 1, h - ph - int(0.9 * TEX_PPM))))
        img[y:y + ph, x:x + pw] = textures.poster(rng, pw, ph)
    if rng.random() < 0.3:  # car operating panel with buttons
        x, y = int(rng.integers(2, max(3, w - 30))), h - int(1.5 * TEX_PPM)
        cv2.rectangle(img, (x, y), (x + 25, y + 90), (60, 60, 60), -1)
        for k in range(6):
            cv2.circle(img, (x + 12, y + 10 + 14 * k), 4, (200, 200, 200), -1)
    return img


def make_car(rng: Rng, min_width: float = 0.0, min_depth: float = 0.0) -> Car:
    width = max(min_width, rng.uniform(1.1, 1.6))
    depth = max(min_depth, rng.uniform(1.3, 2.2))
    height = rng.uniform(2.2, 2.5)
    floor_tex = textures.floor(rng, int(width * TEX_PPM), int(depth * TEX_PPM), TEX_PPM)
    walls = {
        "door": _door_wall(rng, width, height),
        "back": _side_wall(rng, width, height),
        "left": _side_wall(rng, depth, height),
        "right": _side_wall(rng, depth, height),
    }
    ceiling = jitter(rng, (200, 200, 200), 12)
    return Car(width, depth, height, floor_tex, walls, ceiling)


def _draw_wall(img: np.ndarray, cam: Camera, corners: np.ndarray, tex: np.ndarray) -> None:
    """Draw a wall; if its near end reaches behind the camera, keep only the part in front of it.

    A corner camera sits against two walls; what it sees of them is their far part, strongly
    foreshortened. Cutting the wall (and its texture) from the near end keeps the projection valid.
    """
    tl, tr, br, bl = corners
    near_left = np.linalg.norm((tl + bl) / 2 - cam.position) < np.linalg.norm((tr + br) / 2 - cam.position)
    tw = tex.shape[1]
    for keep in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        if near_left:
            q = np.array([tr + (tl - tr) * keep, tr, br, br + (bl - br) * keep])
            part = tex[:, tw - max(2, int(tw * keep)):]
        else:
            q = np.array([tl, tl + (tr - tl) * keep, bl + (br - bl) * keep, bl])
            part = tex[:, : max(2, int(tw * keep))]
        uv, depth = cam.project(q)
        if (depth > 0.05).all():
            warp_plane(img, part, uv)
            return


def render_car(car: Car, cam: Camera, visible_walls: tuple[str, ...], wall_top: float | None = None) -> np.ndarray:
    """Background image: ceiling colour, then the visible walls (up to ``wall_top``), then the floor.

    A top-down camera sees the walls up to just below itself; cutting them there keeps the
    homography away from depth 0 (the texture's top strip is dropped: nobody would see it).
    """
    img = np.empty((cam.height, cam.width, 3), np.uint8)
    img[:] = car.ceiling
    top = car.height if wall_top is None else min(car.height, wall_top)
    for name in visible_walls:
        tex = car.walls[name]
        cut = round((car.height - top) * TEX_PPM)
        _draw_wall(img, cam, car.surface_corners(name, top), tex[cut:] if cut < tex.shape[0] - 2 else tex)
    uv, _ = cam.project(car.surface_corners("floor"))
    warp_plane(img, car.floor_tex, uv)
    return img
