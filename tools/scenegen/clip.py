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
from pathlib import Path

import cv2
import numpy as np

from tools.corpus import CLASS_ID, CLASSES
from tools.scenegen import effects
from tools.scenegen.camera import Camera
from tools.scenegen.models3d import build as build_model
from tools.scenegen.room import Car, make_car, render_car
from tools.scenegen.solids import Model, render_models

log = logging.getLogger(__name__)
FPS = 10
SECONDS = 10
SIZE = (640, 480)
# "Fully in" means the whole vehicle is past the door line: its centre is half a length inside.
INSIDE_DEPTH_M = 0.9


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


def _draw_actors(img: np.ndarray, ids: np.ndarray, cam: Camera, door: np.ndarray,
                 actors: list[tuple[Model, float, float, float, int]]) -> dict[int, int]:
    """Draw the actors; one still on the landing (y < 0) shows only through the door opening."""
    layer, layer_ids = img.copy(), np.zeros_like(ids)
    areas = render_models(layer, layer_ids, cam, actors)
    keep = layer_ids > 0
    for _, _, y, _, idx in actors:
        if y < 0.0:
            keep &= ~((layer_ids == idx) & (door == 0))
    img[keep] = layer[keep]
    ids[keep] = layer_ids[keep]
    return areas


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


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
    subject_model = build_model(rng, cls, escooter_share=0.0)
    # (model, offset ahead, offset left) of the person with the subject.
    if subject == "wheelchair":  # the user sits in it
        companion = (build_model(rng, CLASS_ID["person"], seated=True), 0.05, 0.0)
    elif subject in ("ebike", "bicycle"):  # pushed by a rider walking beside it
        companion = (build_model(rng, CLASS_ID["person"]), 0.3, 0.5)
    else:  # pushed from behind
        companion = (build_model(rng, CLASS_ID["person"]), -0.8, 0.0)
    yaw = float(np.deg2rad(rng.uniform(70, 80)))
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
        subject_whole = False
        if y is not None:
            # Wheelchairs and prams turn round inside (as they do), showing their sides; then
            # they leave forwards. E-bikes and bicycles are too long to turn in a car and back out.
            turn = subject not in ("ebike", "bicycle") and f / FPS >= 3.0
            heading = yaw + (np.pi * min(1.0, (f / FPS - 3.0) / 1.5) if turn else 0.0)
            dx, dy = np.cos(heading), np.sin(heading)
            model, ahead, left = companion
            actors = [(subject_model, x_path, y, heading, 1),
                      (model, x_path + ahead * dx - left * dy, y + ahead * dy + left * dx, heading, 2)]
            _draw_actors(img, ids, cam, door, actors)
            alone = np.zeros_like(ids)
            render_models(np.zeros_like(img), alone, cam, actors[:1])
            subject_whole = bool(alone.any()) and not _touches_border(alone)
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
        if full_view_frame is None and inside and subject_whole:
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
