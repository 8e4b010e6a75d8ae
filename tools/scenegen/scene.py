"""Compose one labelled elevator scene: car, camera, objects (with companions), effects, boxes.

Boxes come from an instance map painted together with the image and warped with it, so they stay
right after perspective, rotation, occlusion and fisheye; an object whose visible part is too small
or too occluded is dropped from the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tools.corpus import CLASS_ID, Box
from tools.scenegen import effects
from tools.scenegen.camera import Camera, fisheye
from tools.scenegen.catalog import (
    CLUTTER_TOP,
    ESCOOTER_SHARE,
    ESCOOTER_SIDE,
    ESCOOTER_TOP,
    HEIGHT_M,
    LENGTH_M,
    MAIN_WEIGHTS,
    SIDE,
    SPRITE_PPM,
    TOP,
    TOP_Z_M,
)
from tools.scenegen.cutouts import CutoutBank
from tools.scenegen.draw_people import person_side, person_top
from tools.scenegen.models3d import build as build_model
from tools.scenegen.room import Car, make_car, render_car
from tools.scenegen.solids import contact_shadows, render_models
from tools.scenegen.sprite import Rng, Sprite

PERSON = CLASS_ID["person"]
CLUTTER = -1  # drawn, never labelled
MIN_VISIBLE = 0.3  # fraction of an object's pixels that must stay visible for it to be labelled
MIN_BOX_SIDE = 6  # pixels


@dataclass
class Thing:
    cls: int
    x: float  # floor position, metres
    y: float
    yaw: float  # radians, direction of travel on the floor
    seated: bool = False
    parent: int = -1  # index of the object this one belongs with (drawn right after it)


@dataclass(frozen=True)
class SceneConfig:
    width: int = 640
    height: int = 480
    top_down: float = 0.4  # fraction of top-down views (rest: ceiling corner)
    fisheye: float = 0.3
    night_ir: float = 0.2
    cutout: float = 0.3  # chance an object is a real cut-out when the bank has one (sprite scenes)
    solid: float = 0.5  # fraction of scenes whose objects are 3D solids instead of sprites


@dataclass
class Scene:
    image: np.ndarray
    boxes: list[Box]
    cutout_origins: list[tuple[int, str]]  # (class, source group) of each real cut-out pasted

    @property
    def used_cutouts(self) -> bool:
        return bool(self.cutout_origins)


def _things(rng: Rng, car: Car) -> list[Thing]:
    """Main objects with their companions (rider, occupant, pusher) and bystanders."""
    things: list[Thing] = []
    n_main = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
    classes, weights = zip(*MAIN_WEIGHTS.items(), strict=True)
    p = np.asarray(weights) / sum(weights)
    for _ in range(n_main):
        cls = int(rng.choice(classes, p=p))
        # Positions may reach past the door line: objects caught entering or leaving.
        t = Thing(cls, rng.uniform(0.2, car.width - 0.2), rng.uniform(-0.2, car.depth - 0.3),
                  rng.uniform(0, 2 * np.pi))
        things.append(t)
        idx = len(things) - 1
        dx, dy = np.cos(t.yaw), np.sin(t.yaw)
        if cls == CLASS_ID["wheelchair"] and rng.random() < 0.75:
            things.append(Thing(PERSON, t.x + 0.1 * dx, t.y + 0.1 * dy, t.yaw, seated=True, parent=idx))
        if cls in (CLASS_ID["wheelchair"], CLASS_ID["stroller"], CLASS_ID["cart"]) and rng.random() < 0.5:
            things.append(Thing(PERSON, t.x - 0.6 * dx, t.y - 0.6 * dy, t.yaw, parent=idx))
        if cls == CLASS_ID["ebike"] and rng.random() < 0.2:  # rider standing over it, hiding the seat
            things.append(Thing(PERSON, t.x + 0.1 * dx, t.y + 0.1 * dy, t.yaw, parent=idx))
        elif cls in (CLASS_ID["ebike"], CLASS_ID["bicycle"]) and rng.random() < 0.65:
            side = rng.choice([-1.0, 1.0])
            things.append(Thing(PERSON, t.x + 0.3 * dx - side * 0.45 * dy, t.y + 0.3 * dy + side * 0.45 * dx,
                                t.yaw, parent=idx))
    for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):
        things.append(Thing(CLUTTER, rng.uniform(0.1, car.width - 0.1), rng.uniform(0.1, car.depth - 0.1),
                            rng.uniform(0, 2 * np.pi)))
    for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
        things.append(Thing(PERSON, rng.uniform(0.2, car.width - 0.2), rng.uniform(0.1, car.depth - 0.2),
                            rng.uniform(0, 2 * np.pi)))
    return things


def _camera(rng: Rng, car: Car, cfg: SceneConfig, top_down: bool) -> tuple[Camera, tuple[str, ...]]:
    w, d, h = car.width, car.depth, car.height
    if top_down:
        pos = np.array([w / 2 + rng.uniform(-0.15, 0.15), d / 2 + rng.uniform(-0.2, 0.2), h - 0.05])
        target = pos * np.array([1, 1, 0]) + np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0])
        cam = Camera.look_at(pos, target, rng.uniform(80, 110), cfg.width, cfg.height, rng.uniform(-180, 180))
        return cam, ("door", "back", "left", "right")
    on_right = rng.random() < 0.5
    pos = np.array([w - 0.06 if on_right else 0.06, d - 0.06, h - rng.uniform(0.05, 0.2)])
    target = np.array([w * rng.uniform(0.3, 0.7), d * rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.6)])
    cam = Camera.look_at(pos, target, rng.uniform(78, 105), cfg.width, cfg.height, rng.uniform(-4, 4))
    return cam, ("door", "left", "right")


def _sprite(
    rng: Rng, t: Thing, top_down: bool, bank: CutoutBank, split: str, cfg: SceneConfig
) -> tuple[Sprite, str | None]:
    """The sprite, and the source group of the real photo when it is a cut-out (else None)."""
    """A sprite at SPRITE_PPM: procedural, or a real cut-out rescaled to the class's physical size."""
    use_cut = bank and not t.seated and t.parent < 0 and rng.random() < cfg.cutout * (0.5 if top_down else 1.0)
    if use_cut:
        cut = bank.pick(rng, t.cls, split)
        if cut is not None:
            h, w = cut.bgra.shape[:2]
            size_m = LENGTH_M[t.cls] if top_down else HEIGHT_M[t.cls]
            ref = max(h, w) if top_down else h
            return cut.scaled(size_m * SPRITE_PPM / ref * rng.uniform(0.85, 1.15)), cut.origin
    if t.cls == PERSON:
        draw_person = person_top if top_down else person_side
        return draw_person(rng, SPRITE_PPM, t.seated), None
    if t.cls == CLUTTER:
        return CLUTTER_TOP(rng, SPRITE_PPM), None
    if t.cls == CLASS_ID["ebike"] and rng.random() < ESCOOTER_SHARE:
        return (ESCOOTER_TOP if top_down else ESCOOTER_SIDE)(rng, SPRITE_PPM), None
    return (TOP if top_down else SIDE)[t.cls](rng, SPRITE_PPM), None


def paste(img: np.ndarray, ids: np.ndarray, sprite: Sprite, cx: float, cy: float, idx: int,
           shadow: bool) -> int:
    """Alpha-blend a sprite centred at (cx, cy); paint its instance id; return its full pixel area."""
    sh, sw = sprite.bgra.shape[:2]
    x0, y0 = round(cx - sw / 2), round(cy - sh / 2)
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(img.shape[1], x0 + sw), min(img.shape[0], y0 + sh)
    full = int(np.count_nonzero(sprite.alpha > 127))
    if x2 <= x1 or y2 <= y1:
        return full
    crop = sprite.bgra[y1 - y0: y2 - y0, x1 - x0: x2 - x0]
    a = crop[:, :, 3:4].astype(np.float32) / 255.0
    region = img[y1:y2, x1:x2].astype(np.float32)
    if shadow:  # soft contact shadow: darken under the object before drawing it
        k = max(3, (min(sh, sw) // 6) | 1)
        soft = cv2.GaussianBlur(crop[:, :, 3], (k, k), 0).astype(np.float32)[:, :, None] / 255.0
        region *= 1.0 - 0.35 * soft
    region = region * (1 - a) + crop[:, :, :3].astype(np.float32) * a
    img[y1:y2, x1:x2] = region.astype(np.uint8)
    ids[y1:y2, x1:x2][crop[:, :, 3] > 127] = idx
    return full


def place_top(cam: Camera, t: Thing, sprite: Sprite) -> tuple[Sprite, float, float, float]:
    (u, v), depth = (a[0] for a in cam.project(np.array([[t.x, t.y, TOP_Z_M[t.cls]]])))
    scale = cam.focal / max(depth, 0.2) / SPRITE_PPM
    # The image angle of the travel direction, so the sprite's +x axis follows it.
    uv2, _ = cam.project(np.array([[t.x + np.cos(t.yaw) * 0.3, t.y + np.sin(t.yaw) * 0.3, TOP_Z_M[t.cls]]]))
    angle = np.degrees(np.arctan2(uv2[0, 1] - v, uv2[0, 0] - u))
    return sprite.scaled(scale).rotated(-angle), float(u), float(v), float(depth)


def place_side(cam: Camera, t: Thing, sprite: Sprite) -> tuple[Sprite, float, float, float]:
    height_m = sprite.bgra.shape[0] / SPRITE_PPM
    pts = np.array([[t.x, t.y, 0.0], [t.x, t.y, height_m],
                    [t.x + np.cos(t.yaw) * 0.3, t.y + np.sin(t.yaw) * 0.3, 0.0]])
    uv, depth = cam.project(pts)
    foot, head, ahead = uv
    up = head - foot
    length = float(np.hypot(*up))
    travel = ahead - foot
    # Seen end-on a vehicle is short; seen side-on it is full length (sprites are drawn facing right).
    # People look about as wide from every side, so they are squashed less.
    least = 0.75 if t.cls == PERSON else 0.4
    squash = float(np.clip(abs(travel[0]) / (np.hypot(*travel) + 1e-6), least, 1.0))
    scaled = sprite.scaled(length / max(1, sprite.bgra.shape[0]))
    scaled = scaled.resized(int(scaled.bgra.shape[1] * squash), scaled.bgra.shape[0])
    if travel[0] < 0:
        scaled = scaled.flipped()
    tilt = np.degrees(np.arctan2(up[0], -up[1]))  # verticals lean in a tilted camera
    rotated = scaled.rotated(-tilt)
    centre = foot + up / 2
    return rotated, float(centre[0]), float(centre[1]), float(depth[0])


def place_plane(cam: Camera, t: Thing, sprite: Sprite) -> tuple[Sprite, float, float, float] | None:
    """Lay a plan-view sprite on a horizontal plane at the object's top height and project it.

    From a ceiling-corner camera a low object (e-bike, wheelchair, pram) shows mostly its plan, in
    perspective; this is that view. None when the plane reaches behind the camera.
    """
    sh, sw = sprite.bgra.shape[:2]
    z = TOP_Z_M[t.cls] * 0.7
    c, s = np.cos(t.yaw), np.sin(t.yaw)
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
    local = (src - np.array([sw / 2, sh / 2], np.float32)) / SPRITE_PPM
    world = np.stack([t.x + local[:, 0] * c - local[:, 1] * s, t.y + local[:, 0] * s + local[:, 1] * c,
                      np.full(4, z)], 1)
    uv, depth = cam.project(world)
    if (depth < 0.15).any():
        return None
    x0, y0 = np.floor(uv.min(axis=0))
    x1, y1 = np.ceil(uv.max(axis=0))
    bw, bh = int(x1 - x0) + 1, int(y1 - y0) + 1
    if bw > 4 * cam.width or bh > 4 * cam.height:
        return None
    h = cv2.getPerspectiveTransform(src, (uv - [x0, y0]).astype(np.float32))
    warped = cv2.warpPerspective(sprite.bgra, h, (bw, bh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    _, centre_depth = cam.project(np.array([[t.x, t.y, z]]))
    return Sprite(warped, sprite.cls), float(x0 + bw / 2), float(y0 + bh / 2), float(centre_depth[0])


def _plane_chance(cam: Camera, t: Thing) -> float:
    """The steeper the camera looks down at an object, the more its plan view dominates."""
    d = np.array([t.x, t.y, 0.3]) - cam.position
    elevation = np.degrees(np.arctan2(-d[2], np.hypot(d[0], d[1])))
    return float(np.clip((elevation - 25.0) / 35.0, 0.0, 0.9))


def _boxes(ids: np.ndarray, things: list[Thing], full: list[int], visible_before: list[int]) -> list[Box]:
    boxes = []
    for i, t in enumerate(things, start=1):
        if t.cls == CLUTTER or full[i - 1] == 0 or visible_before[i - 1] < MIN_VISIBLE * full[i - 1]:
            continue
        mask = (ids == i).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(mask)
        if w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE:
            boxes.append(Box(t.cls, float(x), float(y), float(x + w), float(y + h)))
    return boxes


def render_scene(rng: Rng, bank: CutoutBank, split: str = "train", cfg: SceneConfig | None = None) -> Scene:
    cfg = cfg or SceneConfig()
    car = make_car(rng)
    top_down = rng.random() < cfg.top_down
    cam, walls = _camera(rng, car, cfg, top_down)
    img = render_car(car, cam, walls, float(cam.position[2]) - 0.3 if top_down else None)
    ids = np.zeros(img.shape[:2], np.uint8)
    things = _things(rng, car)
    origins: list[tuple[int, str]] = []
    if rng.random() < cfg.solid:
        full = _draw_solids(rng, img, ids, cam, things)
    else:
        full, origins = _draw_sprites(rng, img, ids, cam, things, top_down, bank, split, cfg)
    visible = [int(np.count_nonzero(ids == i + 1)) for i in range(len(things))]
    img = effects.lighting(rng, img)
    if rng.random() < cfg.fisheye:
        img, ids = fisheye(img, ids, rng.uniform(0.4, 1.2))
    if rng.random() < cfg.night_ir:
        img = effects.infrared(rng, img)
    if rng.random() < 0.2:
        img = effects.motion_blur(rng, img)
    img = effects.sensor_noise(rng, img, rng.uniform(1, 8))
    if rng.random() < 0.7:
        effects.timestamp_overlay(rng, img)
    if rng.random() < 0.5:
        img = effects.jpeg_roundtrip(img, int(rng.integers(25, 80)))
    return Scene(img, _boxes(ids, things, full, visible), origins)


def _draw_solids(rng: Rng, img: np.ndarray, ids: np.ndarray, cam: Camera, things: list[Thing]) -> list[int]:
    models = [(build_model(rng, t.cls, t.seated, ESCOOTER_SHARE), t.x, t.y, t.yaw, i + 1)
              for i, t in enumerate(things)]
    contact_shadows(img, cam, [m for m in models if things[m[4] - 1].parent < 0 or not things[m[4] - 1].seated])
    areas = render_models(img, ids, cam, models)
    return [areas.get(i + 1, 0) for i in range(len(things))]


def _draw_sprites(
    rng: Rng, img: np.ndarray, ids: np.ndarray, cam: Camera, things: list[Thing], top_down: bool,
    bank: CutoutBank, split: str, cfg: SceneConfig,
) -> tuple[list[int], list[tuple[int, str]]]:
    placed = []
    plan_of: list[bool] = []
    origins: list[tuple[int, str]] = []
    for i, t in enumerate(things):
        if t.seated and t.parent >= 0:  # the occupant is seen the same way as the wheelchair
            plan = plan_of[t.parent]
        else:
            plan = top_down or t.cls == CLUTTER or (t.cls != PERSON and rng.random() < _plane_chance(cam, t))
        plan_of.append(plan)
        sprite, origin = _sprite(rng, t, plan, bank, split, cfg)
        is_cut = origin is not None
        if origin is not None:
            origins.append((t.cls, origin))
        if top_down:
            placed.append((i, *place_top(cam, t, sprite)))
            continue
        on_plane = place_plane(cam, t, sprite) if plan and not is_cut else None
        if on_plane is None:
            if plan:  # a side view is needed after all (cut-outs are side photos)
                sprite = sprite if is_cut else _sprite(rng, t, False, CutoutBank.empty(), split, cfg)[0]
            on_plane = place_side(cam, t, sprite)
        placed.append((i, *on_plane))
    # Painter's order: far first (corner view) or low first (top view); companions after their object.
    def order(p: tuple[int, Sprite, float, float, float]) -> tuple[float, int]:
        i = p[0]
        root = things[i].parent if things[i].parent >= 0 else i
        key = -placed[root][4] if not top_down else TOP_Z_M[things[root].cls]
        return (key, i)

    full = [0] * len(things)
    for i, sprite, u, v, _ in sorted(placed, key=order):
        full[i] = paste(img, ids, sprite, u, v, i + 1, shadow=True)
    return full, origins
