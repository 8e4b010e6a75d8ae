"""A tiny flat-shaded 3D renderer for objects built from boxes, discs, ellipsoids and tubes.

Sprites are cardboard cut-outs: fine from straight above or from the side, wrong from a ceiling
corner, which sees the top and the side of an object at once. Here each object is a handful of
primitives in metres, projected by the scene camera, so any view is right and the instance mask
comes out of the same drawing. Painter's algorithm over faces (far first) is enough at this scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from tools.scenegen.camera import Camera
from tools.scenegen.sprite import Color

LIGHT = np.array([0.3, -0.4, 0.87])  # mostly from the ceiling
_UNIT_BOX = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
_BOX_FACES = ((0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3))
_SPHERE = np.array([
    [np.cos(a) * np.sin(b), np.sin(a) * np.sin(b), np.cos(b)]
    for b in np.linspace(0, np.pi, 7) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)
])


@dataclass
class Face:
    points: np.ndarray  # (N, 3) world, convex polygon (or 2 points for a tube)
    color: Color
    width: float = 0.0  # tubes: diameter in metres


@dataclass
class Model:
    """Primitives in the object's own frame: x forward, y left, z up, origin on the floor."""

    faces: list[Face] = field(default_factory=list)

    def box(self, centre: tuple[float, float, float], size: tuple[float, float, float], color: Color) -> None:
        pts = _UNIT_BOX * np.asarray(size) + np.asarray(centre)
        for idx in _BOX_FACES:
            self.faces.append(Face(pts[list(idx)], color))

    def disc(self, centre: tuple[float, float, float], radius: float, thickness: float, color: Color,
             axis: str = "y", sides: int = 14) -> None:
        """A wheel: a short cylinder (prism) whose axis is local y (or x / z)."""
        a = np.linspace(0, 2 * np.pi, sides, endpoint=False)
        ring = np.stack([np.cos(a) * radius, np.sin(a) * radius], 1)
        c = np.asarray(centre)
        caps = []
        for off in (-thickness / 2, thickness / 2):
            if axis == "y":
                pts = np.stack([ring[:, 0], np.full(sides, off), ring[:, 1]], 1)
            elif axis == "x":
                pts = np.stack([np.full(sides, off), ring[:, 0], ring[:, 1]], 1)
            else:
                pts = np.stack([ring[:, 0], ring[:, 1], np.full(sides, off)], 1)
            caps.append(pts + c)
        dark = (int(color[0] * 0.7), int(color[1] * 0.7), int(color[2] * 0.7))
        for i in range(sides):
            j = (i + 1) % sides
            self.faces.append(Face(np.array([caps[0][i], caps[0][j], caps[1][j], caps[1][i]]), dark))
        self.faces.append(Face(caps[0], color))
        self.faces.append(Face(caps[1], color))

    def blob(self, centre: tuple[float, float, float], radii: tuple[float, float, float], color: Color) -> None:
        """An ellipsoid, drawn as the convex hull of its projected sample points."""
        self.faces.append(Face(_SPHERE * np.asarray(radii) + np.asarray(centre), color, width=-1.0))

    def tube(self, p0: tuple[float, float, float], p1: tuple[float, float, float], diameter: float,
             color: Color) -> None:
        self.faces.append(Face(np.array([p0, p1], float), color, width=diameter))


def _shade(color: Color, normal: np.ndarray | None) -> tuple[int, int, int]:
    k = 0.85 if normal is None else 0.45 + 0.55 * abs(float(normal @ LIGHT))
    return (int(color[0] * k), int(color[1] * k), int(color[2] * k))


@dataclass
class _Drawable:
    depth: float
    obj: int
    kind: str
    uv: np.ndarray
    color: tuple[int, int, int]
    thickness: int = 0


def _drawables(cam: Camera, model: Model, x: float, y: float, yaw: float, obj: int) -> list[_Drawable]:
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out = []
    for f in model.faces:
        pts = f.points @ rot.T + np.array([x, y, 0.0])
        uv, depth = cam.project(pts)
        if (depth < 0.05).any():
            continue
        mean_depth = float(depth.mean())
        if f.width > 0:  # tube
            px = max(1, round(f.width * cam.focal / mean_depth))
            out.append(_Drawable(mean_depth, obj, "line", uv, _shade(f.color, None), px))
        elif f.width < 0:  # ellipsoid
            hull = cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2)
            out.append(_Drawable(mean_depth, obj, "poly", hull, _shade(f.color, None)))
        else:
            n = np.cross(pts[1] - pts[0], pts[2] - pts[0])
            norm = np.linalg.norm(n)
            if norm < 1e-9:
                continue
            n /= norm
            # Two-sided: thin parts (seats, panels) must show from both sides.
            out.append(_Drawable(mean_depth, obj, "poly", uv, _shade(f.color, n)))
    return out


def contact_shadows(img: np.ndarray, cam: Camera, placed: list[tuple[Model, float, float, float, int]]) -> None:
    """Darken the floor under each model (its footprint, blurred): objects look stood, not floating."""
    mask = np.zeros(img.shape[:2], np.uint8)
    for model, x, y, yaw, _ in placed:
        pts = np.concatenate([f.points for f in model.faces])
        lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
        c, s = np.cos(yaw), np.sin(yaw)
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        world = np.column_stack([x + corners[:, 0] * c - corners[:, 1] * s,
                                 y + corners[:, 0] * s + corners[:, 1] * c, np.zeros(4)])
        uv, depth = cam.project(world)
        if (depth > 0.05).all():
            cv2.fillConvexPoly(mask, np.round(uv).astype(np.int32), 255)
    if not mask.any():
        return
    k = max(3, (img.shape[1] // 40) | 1)
    soft = cv2.GaussianBlur(mask, (k, k), 0).astype(np.float32)[:, :, None] / 255.0
    img[:] = (img.astype(np.float32) * (1.0 - 0.4 * soft)).astype(np.uint8)


def render_models(img: np.ndarray, ids: np.ndarray, cam: Camera,
                  placed: list[tuple[Model, float, float, float, int]]) -> dict[int, int]:
    """Draw models (model, x, y, yaw, id) far-to-near into img and ids; return each id's solo area.

    The solo area (pixels the object covers when drawn alone) lets the caller measure occlusion.
    """
    items: list[_Drawable] = []
    for model, x, y, yaw, obj in placed:
        items.extend(_drawables(cam, model, x, y, yaw, obj))
    items.sort(key=lambda d: -d.depth)
    solo = np.zeros(ids.shape, np.uint8)
    areas: dict[int, int] = {}
    for obj in {p[4] for p in placed}:
        solo[:] = 0
        for d in items:
            if d.obj == obj:
                _draw(solo, d, 1, aa=False)
        areas[obj] = int(np.count_nonzero(solo))
    for d in items:
        _draw(img, d, d.color, aa=True)
        _draw(ids, d, d.obj, aa=False)
    return areas


def _draw(target: np.ndarray, d: _Drawable, value: int | tuple[int, int, int], aa: bool) -> None:
    line_type = cv2.LINE_AA if aa else cv2.LINE_8
    pts = np.round(d.uv).astype(np.int32)
    if d.kind == "line":
        cv2.line(target, tuple(pts[0]), tuple(pts[1]), value, d.thickness, line_type)
    else:
        cv2.fillPoly(target, [pts], value, line_type)
