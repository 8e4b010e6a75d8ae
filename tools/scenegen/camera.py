"""Pinhole camera looking into a box-shaped car; fisheye as a post-warp of image and instance map.

World frame: metres, floor z = 0, x across the car (width), y along its depth; the door is in the
wall y = 0. Camera rows of R are (right, down, forward) so u grows right and v grows down.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) world -> camera
    focal: float
    width: int
    height: int

    @staticmethod
    def look_at(position: np.ndarray, target: np.ndarray, fov_deg: float, width: int, height: int,
                roll_deg: float = 0.0) -> Camera:
        forward = target - position
        forward = forward / np.linalg.norm(forward)
        up = np.array([0.0, 0.0, 1.0])
        if abs(forward @ up) > 0.98:  # looking straight down: any horizontal "up" will do
            up = np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        roll = np.deg2rad(roll_deg)
        right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
        focal = width / 2 / np.tan(np.deg2rad(fov_deg) / 2)
        return Camera(position, np.stack([right, down, forward]), float(focal), width, height)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates (N, 2) and depth (N,)."""
        pc = (points - self.position) @ self.rotation.T
        z = np.maximum(pc[:, 2], 1e-3)
        uv = np.stack([self.focal * pc[:, 0] / z + self.width / 2, self.focal * pc[:, 1] / z + self.height / 2], 1)
        return uv, pc[:, 2]


def warp_plane(dst: np.ndarray, texture: np.ndarray, corners_uv: np.ndarray) -> None:
    """Paint a texture onto the image quad ``corners_uv`` (texture corners TL, TR, BR, BL)."""
    th, tw = texture.shape[:2]
    src = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
    h = cv2.getPerspectiveTransform(src, corners_uv.astype(np.float32))
    cv2.warpPerspective(texture, h, (dst.shape[1], dst.shape[0]), dst, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_TRANSPARENT)


@lru_cache(maxsize=16)
def _fisheye_maps(width: int, height: int, strength_q: int) -> tuple[np.ndarray, np.ndarray]:
    # Barrel distortion: output radius r_d samples the pinhole image at r_u = r_d (1 + k r_d^2), so the
    # border of the pinhole image is squeezed inward the way a wide fisheye squeezes it.
    k = strength_q / 100.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    norm = np.hypot(cx, cy)
    dx, dy = (xs - cx) / norm, (ys - cy) / norm
    r2 = dx * dx + dy * dy
    scale = (1 + k * r2) / (1 + k * 0.25)  # keep the centre magnification close to 1
    return (cx + dx * scale * norm).astype(np.float32), (cy + dy * scale * norm).astype(np.float32)


def fisheye(image: np.ndarray, ids: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply the same barrel warp to the image (bilinear) and the instance map (nearest)."""
    h, w = image.shape[:2]
    mx, my = _fisheye_maps(w, h, round(strength * 20) * 5)
    out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    out_ids = cv2.remap(ids, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, out_ids
