"""Procedural manual wheelchairs and strollers/prams, from above and from the side.

These are the classes the product must never block, so they get as much variety as the e-bikes:
a wheelchair is a square seat between two large wheels with push handles and footrests; a stroller
has a canopy, a handle bar and four small wheels. Top views: direction of travel along +x.
"""

from __future__ import annotations

import cv2
import numpy as np

from tools.corpus import CLASS_ID
from tools.scenegen.draw_twowheel import BLACK, CHROME, DARK, _rrect
from tools.scenegen.sprite import Rng, Sprite, canvas, jitter, pick, rgba, shade

FRAME_COLORS = ((190, 190, 195), (40, 40, 40), (150, 60, 30), (40, 40, 150), (60, 120, 60), (120, 120, 120))
FABRIC = ((25, 25, 25), (60, 40, 30), (90, 40, 20), (40, 40, 90), (70, 70, 70))
CANOPY = ((40, 40, 40), (150, 80, 40), (60, 60, 180), (140, 140, 140), (80, 140, 200), (120, 60, 120),
          (60, 120, 120), (200, 200, 210))


def wheelchair_top(rng: Rng, ppm: float) -> Sprite:
    seat = rng.uniform(0.4, 0.5)
    wheel_len = rng.uniform(0.55, 0.65)
    width = seat + 0.2
    length = rng.uniform(0.95, 1.15)
    img = canvas(length + 0.2, width + 0.2, ppm)
    cy = img.shape[0] / 2

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(cy + y * ppm)

    frame = pick(rng, FRAME_COLORS)
    fabric = pick(rng, FABRIC, 10)
    x_seat = 0.15
    # Two big wheels seen edge-on at the sides, with handrims just outside.
    for s in (-1, 1):
        y = s * (seat / 2 + 0.06)
        cv2.line(img, P(x_seat, y), P(x_seat + wheel_len, y), rgba(BLACK), max(2, int(0.04 * ppm)))
        cv2.line(img, P(x_seat + 0.04, y + s * 0.035), P(x_seat + wheel_len - 0.04, y + s * 0.035),
                 rgba(CHROME), max(1, int(0.015 * ppm)))
    _rrect(img, *P(x_seat + 0.05, -seat / 2), *P(x_seat + 0.05 + seat, seat / 2), fabric, 0.03 * ppm)
    # Backrest at the rear with push handles sticking backwards.
    cv2.line(img, P(x_seat + 0.03, -seat / 2), P(x_seat + 0.03, seat / 2), rgba(shade(fabric, 1.4)),
             max(2, int(0.05 * ppm)))
    for s in (-1, 1):
        cv2.line(img, P(x_seat + 0.03, s * seat / 2), P(0.0, s * seat / 2), rgba(frame), max(2, int(0.03 * ppm)))
        cv2.circle(img, P(0.0, s * seat / 2), max(2, int(0.025 * ppm)), rgba(BLACK), -1)
        # Frame rails forward to the footrests, small casters at the front.
        cv2.line(img, P(x_seat + seat, s * seat / 2), P(length - 0.08, s * 0.12), rgba(frame), max(2, int(0.025 * ppm)))
        _rrect(img, *P(length - 0.12, s * 0.02), *P(length, s * 0.16), DARK, 0)
        cv2.line(img, P(x_seat + seat - 0.05, s * (seat / 2 - 0.02)), P(x_seat + seat + 0.05, s * (seat / 2 - 0.02)),
                 rgba(BLACK), max(2, int(0.03 * ppm)))
    return Sprite(img, CLASS_ID["wheelchair"]).trimmed()


def wheelchair_side(rng: Rng, ppm: float) -> Sprite:
    r = rng.uniform(0.28, 0.32)
    img = canvas(1.1, 1.05, ppm)
    ground = img.shape[0] - 0.04 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.05) * ppm), int(ground - y * ppm)

    frame = pick(rng, FRAME_COLORS)
    fabric = pick(rng, FABRIC, 10)
    t = max(2, int(0.03 * ppm))
    hub = (0.35, r)
    seat_h = rng.uniform(0.48, 0.52)
    cv2.line(img, P(0.3, seat_h), P(0.75, seat_h), rgba(fabric), max(3, int(0.06 * ppm)))  # seat
    cv2.line(img, P(0.28, seat_h), P(0.22, seat_h + 0.45), rgba(fabric), max(3, int(0.07 * ppm)))  # backrest
    cv2.line(img, P(0.22, seat_h + 0.45), P(0.1, seat_h + 0.45), rgba(frame), t)  # push handle
    cv2.line(img, P(0.75, seat_h), P(0.85, 0.12), rgba(frame), t)  # leg rest
    cv2.line(img, P(0.8, 0.1), P(0.95, 0.1), rgba(BLACK), t + 1)  # footplate
    cv2.line(img, P(0.7, seat_h - 0.05), P(0.75, 0.1), rgba(frame), t)
    cv2.circle(img, P(0.75, 0.07), int(0.07 * ppm), rgba(BLACK), max(2, int(0.03 * ppm)))  # caster
    c = P(*hub)
    cv2.circle(img, c, int(r * ppm), rgba(BLACK), max(2, int(0.035 * ppm)), cv2.LINE_AA)
    cv2.circle(img, c, int(r * ppm * 0.88), rgba(CHROME), max(1, int(0.012 * ppm)), cv2.LINE_AA)  # handrim
    spoke = rgba(jitter(rng, CHROME, 25))
    for k in range(12):
        a = k * np.pi / 12
        d = (int(np.cos(a) * r * ppm * 0.85), int(np.sin(a) * r * ppm * 0.85))
        cv2.line(img, (c[0] - d[0], c[1] - d[1]), (c[0] + d[0], c[1] + d[1]), spoke, 1)
    return Sprite(img, CLASS_ID["wheelchair"]).trimmed()


def stroller_top(rng: Rng, ppm: float) -> Sprite:
    length = rng.uniform(0.75, 0.95)
    width = rng.uniform(0.45, 0.58)
    img = canvas(length + 0.35, width + 0.2, ppm)
    cy = img.shape[0] / 2

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(cy + y * ppm)

    canopy = pick(rng, CANOPY)
    frame = pick(rng, ((30, 30, 30), (180, 180, 185), (60, 60, 60)), 10)
    for x in (0.05, length - 0.05):  # four small wheels at the corners
        for s in (-1, 1):
            _rrect(img, *P(x - 0.06, s * width / 2 - 0.025), *P(x + 0.06, s * width / 2 + 0.025), BLACK, 0)
    _rrect(img, *P(0.1, -width / 2 + 0.05), *P(length - 0.05, width / 2 - 0.05), shade(canopy, 0.7), 0.08 * ppm)
    # The canopy: a dome over the front half, ribbed.
    cl = rng.uniform(0.35, 0.55) * length
    cv2.ellipse(img, P(length - 0.05 - cl, 0), (int(cl * ppm), int((width / 2 - 0.03) * ppm)), 0, -90, 90,
                rgba(canopy), -1, cv2.LINE_AA)
    for k in (0.35, 0.7):
        cv2.ellipse(img, P(length - 0.05 - cl, 0), (int(cl * k * ppm), int((width / 2 - 0.03) * ppm)), 0, -90, 90,
                    rgba(shade(canopy, 0.75)), 1, cv2.LINE_AA)
    # Handle bar behind, across the whole width.
    cv2.line(img, P(0.1, -width / 2 + 0.05), P(-0.05, -width / 2 + 0.08), rgba(frame), max(2, int(0.025 * ppm)))
    cv2.line(img, P(0.1, width / 2 - 0.05), P(-0.05, width / 2 - 0.08), rgba(frame), max(2, int(0.025 * ppm)))
    cv2.line(img, P(-0.05, -width / 2 + 0.08), P(-0.05, width / 2 - 0.08), rgba(BLACK), max(3, int(0.04 * ppm)))
    if rng.random() < 0.5:  # baby blanket / toy in the seat area
        cv2.circle(img, P(0.3, 0), max(3, int(0.09 * ppm)), rgba(pick(rng, CANOPY)), -1, cv2.LINE_AA)
    return Sprite(img, CLASS_ID["stroller"]).trimmed()


def stroller_side(rng: Rng, ppm: float) -> Sprite:
    img = canvas(1.05, 1.15, ppm)
    ground = img.shape[0] - 0.04 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.05) * ppm), int(ground - y * ppm)

    canopy = pick(rng, CANOPY)
    frame = pick(rng, ((30, 30, 30), (180, 180, 185), (60, 60, 60)), 10)
    t = max(2, int(0.025 * ppm))
    wr = rng.uniform(0.06, 0.09)
    body_y = rng.uniform(0.45, 0.6)
    # Bassinet body, canopy arc over its front, handle up and back.
    _rrect(img, *P(0.25, body_y + 0.25), *P(0.8, body_y), shade(canopy, 0.8), 0.1 * ppm)
    cv2.ellipse(img, P(0.62, body_y + 0.22), (int(0.22 * ppm), int(0.3 * ppm)), 0, 180, 360, rgba(canopy), -1,
                cv2.LINE_AA)
    for a, b in (((0.25, body_y), (0.15, wr)), ((0.75, body_y), (0.85, wr)), ((0.3, body_y), (0.85, wr)),
                 ((0.25, body_y + 0.05), (0.0, body_y + rng.uniform(0.4, 0.5)))):
        cv2.line(img, P(*a), P(*b), rgba(frame), t, cv2.LINE_AA)
    hx, hy = 0.0, body_y + 0.45
    cv2.line(img, P(hx - 0.02, hy), P(hx + 0.05, hy), rgba(BLACK), t + 2)
    if rng.random() < 0.5:  # under-seat basket
        cv2.rectangle(img, P(0.3, body_y - 0.05), P(0.7, body_y - 0.22), rgba(DARK), 1)
    for x in (0.15, 0.85):
        cv2.circle(img, P(x, wr), int(wr * ppm), rgba(BLACK), -1, cv2.LINE_AA)
        cv2.circle(img, P(x, wr), max(1, int(wr * ppm * 0.4)), rgba(CHROME), -1)
    return Sprite(img, CLASS_ID["stroller"]).trimmed()
