"""Demo clips for the device: a subject is pushed into an empty car, waits, and leaves.

Procedural objects only (no dataset cut-outs), so the clips can be committed and shipped. Next to
the video a JSON sidecar gives the ground truth: frames where the subject is in view, the first
frame where it is fully in view, and per-frame boxes in pixels.

Timeline (10 fps, 10 s): empty 0-2 s; enters through the door 2-3 s; stands 3-7 s; backs out
7-9 s; empty again to 10 s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tools.corpus import CLASS_ID, CLASSES
from tools.scenegen import effects
from tools.scenegen.camera import Camera
from tools.scenegen.catalog import SPRITE_PPM, TOP
from tools.scenegen.draw_people import person_side, person_top
from tools.scenegen.room import Car, make_car, render_car
from tools.scenegen.scene import Thing, paste, place_plane, place_side
from tools.scenegen.sprite import Sprite

log = logging.getLogger(__name__)
FPS = 10
SECONDS = 10
SIZE = (640, 480)
FULL_VIEW_FRACTION = 0.97  # share of the subject's pixels visible for "fully in view"
# "Fully in" means the whole vehicle is past the door line: its centre is half a length inside.
INSIDE_DEPTH_M = 0.9


@dataclass(frozen=True)
class Actor:
    sprite: Sprite
    offset: tuple[float, float]  # metres from the subject, in the subject's frame (ahead, left)


def _position(frame: int, car: Car) -> float | None:
    """Depth y (m) of the subject along its path, or None when it is off stage."""
    t = frame / FPS
    outside, inside = -1.0, car.depth * 0.5
    if t < 2.0 or t >= 9.0:
        return None
    if t < 3.0:
        return outside + (inside - outside) * (t - 2.0)
    if t < 7.0:
        return inside
    return inside + (outside - inside) * min(1.0, (t - 7.0) / 1.6)


def _place(cam: Camera, t: Thing, sprite: Sprite) -> tuple[Sprite, float, float, float]:
    """Plan sprites (wider than tall) lie on a plane; standing people are upright."""
    if sprite.bgra.shape[1] > sprite.bgra.shape[0] or t.cls != CLASS_ID["person"]:
        on_plane = place_plane(cam, t, sprite)
        if on_plane is not None:
            return on_plane
    return place_side(cam, t, sprite)


def _door_mask(car: Car, cam: Camera) -> np.ndarray:
    """Image area of the door opening: the only place an object still on the landing can be seen."""
    half = min(car.width - 0.1, 1.0) / 2
    xc = car.width / 2
    corners = np.array([[xc - half, 0, 2.05], [xc + half, 0, 2.05], [xc + half, 0, 0], [xc - half, 0, 0]])
    uv, _ = cam.project(corners)
    mask = np.zeros((cam.height, cam.width), np.uint8)
    cv2.fillConvexPoly(mask, uv.astype(np.int32), 1)
    return mask


def _open_door(img: np.ndarray, door: np.ndarray, rng: np.random.Generator) -> None:
    # The landing behind the open door: dim corridor wall and floor.
    landing = np.full_like(img, (70, 75, 80))
    h = img.shape[0]
    landing[int(h * 0.55):] = (95, 95, 100)
    noise = rng.normal(0, 4, img.shape[:2])[:, :, None]
    landing = np.clip(landing + noise, 0, 255).astype(np.uint8)
    img[door > 0] = landing[door > 0]


def render_clip(seed: int, subject: str) -> tuple[list[np.ndarray], dict[str, object]]:
    rng = np.random.default_rng([seed, 999])
    car = make_car(rng, min_width=1.35, min_depth=1.7)  # room for an e-bike and the person pushing it
    w, h = SIZE
    cam = Camera.look_at(np.array([car.width - 0.06, car.depth - 0.06, car.height - 0.1]),
                         np.array([car.width * 0.4, car.depth * 0.25, 0.0]), 100.0, w, h)
    base = render_car(car, cam, ("door", "left", "right"))
    door = _door_mask(car, cam)
    open_base = base.copy()
    _open_door(open_base, door, rng)
    cls = CLASS_ID[subject]
    # Seen from a ceiling corner, low objects show mostly their plan (see scene.place_plane).
    subject_sprite = TOP[cls](rng, SPRITE_PPM)
    if subject == "wheelchair":  # the user sits in it
        companions = [Actor(person_top(rng, SPRITE_PPM, seated=True), (0.2, 0.0))]
    elif subject == "ebike":  # pushed by a rider walking beside it
        companions = [Actor(person_side(rng, SPRITE_PPM), (0.3, 0.5))]
    else:  # pushed from behind
        companions = [Actor(person_side(rng, SPRITE_PPM), (-0.75, 0.0))]
    yaw = np.deg2rad(rng.uniform(70, 80))
    x_path = car.width * 0.5
    stamp_rng_seed = int(rng.integers(1 << 30))
    gain = float(rng.uniform(0.8, 1.1))
    frames: list[np.ndarray] = []
    records: list[dict[str, object]] = []
    per_frame_boxes: list[list[dict[str, object]]] = []
    full_view_frame: int | None = None
    for f in range(FPS * SECONDS):
        y = _position(f, car)
        door_open = y is not None or (1.5 <= f / FPS < 9.5)
        img = (open_base if door_open else base).copy()
        ids = np.zeros(img.shape[:2], np.uint8)
        full = in_frame = 0
        if y is not None:
            dx, dy = np.cos(yaw), np.sin(yaw)
            thing = Thing(cls, x_path, y, yaw)
            layers = [(subject_sprite, thing, 1)]
            for a in companions:
                ahead, left = a.offset
                pos = (x_path + ahead * dx - left * dy, y + ahead * dy + left * dx)
                layers.append((a.sprite, Thing(CLASS_ID["person"], pos[0], pos[1], yaw), 2))
            placed = [(_place(cam, t, s), idx, t) for s, t, idx in layers]
            placed.sort(key=lambda p: -p[0][3])  # far first
            for (sprite, u, v, _), idx, t in placed:
                if t.y < 0.0:  # still on the landing: visible only through the door opening
                    layer = img.copy()
                    layer_ids = ids.copy()
                    area = paste(layer, layer_ids, sprite, u, v, idx, shadow=False)
                    sel = door > 0
                    img[sel] = layer[sel]
                    ids[sel] = layer_ids[sel]
                else:
                    area = paste(img, ids, sprite, u, v, idx, shadow=True)
                if idx == 1:
                    # Visible share of the subject ignoring its own rider/occupant: image bounds only.
                    alone = np.zeros_like(ids)
                    paste(np.zeros_like(img), alone, sprite, u, v, 1, shadow=False)
                    full, in_frame = area, int(np.count_nonzero(alone))
        # Same light on every frame (a real car's light does not flicker), fresh sensor noise.
        img = cv2.convertScaleAbs(img, alpha=gain)
        img = effects.sensor_noise(np.random.default_rng([seed, f]), img, 3.0)
        effects.timestamp_overlay(np.random.default_rng(stamp_rng_seed), img, f / FPS)
        boxes: list[dict[str, object]] = []
        for idx, name in ((1, subject), (2, "person")):
            mask = (ids == idx).astype(np.uint8)
            if mask.any():
                x, y0, bw, bh = cv2.boundingRect(mask)
                boxes.append({"class": name, "class_id": CLASSES.index(name), "xyxy": [x, y0, x + bw, y0 + bh]})
        inside = y is not None and y >= INSIDE_DEPTH_M
        if full_view_frame is None and inside and in_frame >= FULL_VIEW_FRACTION * full:
            full_view_frame = f
        frames.append(img)
        records.append({"frame": f, "t": round(f / FPS, 2), "boxes": boxes})
        per_frame_boxes.append(boxes)
    in_view = [f for f, boxes in enumerate(per_frame_boxes) if any(b["class"] == subject for b in boxes)]
    truth: dict[str, object] = {
        "subject": subject, "fps": FPS, "size": list(SIZE), "frames": len(frames), "seed": seed,
        "first_in_view_frame": in_view[0] if in_view else None,
        "fully_in_view_frame": full_view_frame,
        "last_in_view_frame": in_view[-1] if in_view else None,
        "procedural_only": True, "per_frame": records,
    }
    return frames, truth


def write_clip(out: Path, seed: int = 7, subject: str = "ebike") -> dict[str, object]:
    frames, truth = render_clip(seed, subject)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {out}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    if n != len(frames):
        raise RuntimeError(f"{out} reads back {n} frames, wrote {len(frames)}")
    out.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    log.info("wrote %s (%d frames, %.1f kB), fully in view at frame %s", out, n, out.stat().st_size / 1024,
             truth["fully_in_view_frame"])
    return truth
