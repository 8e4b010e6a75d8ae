"""Procedural people (standing, seated) and carts / luggage, from above and from the side."""

from __future__ import annotations

import cv2

from tools.corpus import CLASS_ID
from tools.scenegen.draw_twowheel import BLACK, DARK, _rrect
from tools.scenegen.sprite import CLOTHES, HAIR, SKIN, Rng, Sprite, canvas, pick, rgba, shade

LUGGAGE = ((40, 40, 40), (60, 60, 160), (150, 90, 40), (180, 180, 185), (40, 120, 200), (90, 60, 40))


def person_top(rng: Rng, ppm: float, seated: bool = False) -> Sprite:
    """From above: shoulders ellipse, head circle; arms sometimes forward (pushing something)."""
    shoulders = rng.uniform(0.38, 0.5)
    img = canvas(0.9, shoulders + 0.2, ppm)
    cx, cy = int(0.35 * ppm), img.shape[0] // 2
    top = pick(rng, CLOTHES)
    if seated:  # thighs forward
        legs = pick(rng, CLOTHES)
        for s in (-1, 1):
            _rrect(img, cx, cy + s * 0.1 * ppm - 0.06 * ppm, cx + 0.45 * ppm, cy + s * 0.1 * ppm + 0.06 * ppm, legs,
                   0.05 * ppm)
    if rng.random() < 0.5 or seated:
        for s in (-1, 1):
            cv2.line(img, (cx, cy + int(s * shoulders * 0.42 * ppm)),
                     (cx + int(0.35 * ppm), cy + int(s * shoulders * 0.3 * ppm)), rgba(top), max(3, int(0.08 * ppm)))
    cv2.ellipse(img, (cx, cy), (int(0.13 * ppm), int(shoulders / 2 * ppm)), 0, 0, 360, rgba(top), -1, cv2.LINE_AA)
    hair = pick(rng, HAIR, 8)
    head = (cx + int(rng.uniform(-0.02, 0.04) * ppm), cy)
    cv2.circle(img, head, int(rng.uniform(0.085, 0.105) * ppm), rgba(hair), -1, cv2.LINE_AA)
    if rng.random() < 0.2:  # cap or helmet
        cv2.circle(img, head, int(0.11 * ppm), rgba(pick(rng, CLOTHES)), -1, cv2.LINE_AA)
    return Sprite(img, CLASS_ID["person"]).trimmed()


def person_side(rng: Rng, ppm: float, seated: bool = False) -> Sprite:
    """Standing (front/side blend) or seated figure; height 1.5-1.85 m."""
    h = rng.uniform(1.5, 1.85)
    img = canvas(0.8, h + 0.1, ppm)
    ground = img.shape[0] - 0.03 * ppm
    cx = img.shape[1] // 2

    def P(x: float, y: float) -> tuple[int, int]:
        return int(cx + x * ppm), int(ground - y * ppm)

    top, legs = pick(rng, CLOTHES), pick(rng, CLOTHES)
    skin, hair = pick(rng, SKIN, 10), pick(rng, HAIR, 8)
    w = rng.uniform(0.36, 0.46)
    if seated:
        hip = 0.5
        head_y = hip + 0.62
        _rrect(img, *P(-0.05, hip + 0.08), *P(0.35, hip - 0.06), legs, 0.05 * ppm)
        _rrect(img, *P(0.25, hip), *P(0.37, 0.1), legs, 0.04 * ppm)
        _rrect(img, *P(-w / 2 + 0.05, head_y - 0.1), *P(w / 2 - 0.05, hip), top, 0.08 * ppm)
    else:
        hip = h * 0.5
        head_y = h - 0.11
        for s in (-1, 1):
            _rrect(img, *P(s * 0.06 - 0.065, hip), *P(s * 0.06 + 0.065, 0.06), legs, 0.03 * ppm)
            cv2.ellipse(img, P(s * 0.07, 0.04), (int(0.08 * ppm), int(0.04 * ppm)), 0, 0, 360, rgba(BLACK), -1)
        _rrect(img, *P(-w / 2, head_y - 0.12), *P(w / 2, hip - 0.05), top, 0.1 * ppm)
        for s in (-1, 1):
            cv2.line(img, P(s * (w / 2 - 0.03), head_y - 0.18), P(s * (w / 2 + 0.02), hip - 0.05), rgba(top),
                     max(3, int(0.08 * ppm)))
            cv2.circle(img, P(s * (w / 2 + 0.02), hip - 0.07), max(2, int(0.04 * ppm)), rgba(skin), -1)
    cv2.circle(img, P(0, head_y), int(0.1 * ppm), rgba(skin), -1, cv2.LINE_AA)
    cv2.ellipse(img, P(0, head_y + 0.03), (int(0.105 * ppm), int(0.08 * ppm)), 0, 180, 360, rgba(hair), -1)
    return Sprite(img, CLASS_ID["person"]).trimmed()


def cart_top(rng: Rng, ppm: float) -> Sprite:
    """Suitcase, delivery trolley with boxes, or shopping cart, from above."""
    kind = rng.integers(3)
    length, width = (rng.uniform(0.4, 0.75), rng.uniform(0.3, 0.5))
    img = canvas(length + 0.3, width + 0.2, ppm)

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int((y + 0.1) * ppm)

    color = pick(rng, LUGGAGE)
    if kind == 0:  # suitcase with ribs and handle
        _rrect(img, *P(0, 0), *P(length, width), color, 0.05 * ppm)
        for k in range(1, 4):
            cv2.line(img, P(k * length / 4, 0.02), P(k * length / 4, width - 0.02), rgba(shade(color, 0.7)), 1)
        cv2.line(img, P(length, width / 2 - 0.08), P(length + 0.12, width / 2), rgba(DARK), max(2, int(0.03 * ppm)))
    elif kind == 1:  # trolley with stacked boxes
        cv2.rectangle(img, P(0, 0), P(length, width), rgba(DARK), -1)
        box = pick(rng, ((60, 120, 170), (70, 140, 190), (200, 200, 200)), 15)
        _rrect(img, *P(0.04, 0.04), *P(length - 0.04, width - 0.04), box, 0)
        cv2.line(img, P(0.04, width / 2), P(length - 0.04, width / 2), rgba(shade(box, 0.6)), 2)
        cv2.line(img, P(-0.05, 0), P(-0.05, width), rgba(BLACK), max(2, int(0.03 * ppm)))
    else:  # wire shopping cart
        c = rgba(pick(rng, ((180, 180, 185), (40, 40, 160), (60, 60, 60)), 10))
        cv2.rectangle(img, P(0, 0), P(length, width), c, max(2, int(0.02 * ppm)))
        step = max(3, int(0.05 * ppm))
        x0, y0 = P(0, 0)
        x1, y1 = P(length, width)
        for x in range(x0, x1, step):
            cv2.line(img, (x, y0), (x, y1), c, 1)
        for y in range(y0, y1, step):
            cv2.line(img, (x0, y), (x1, y), c, 1)
        cv2.line(img, P(-0.06, -0.02), P(-0.06, width + 0.02), rgba(BLACK), max(3, int(0.04 * ppm)))
    return Sprite(img, CLASS_ID["cart"]).trimmed()


def cart_side(rng: Rng, ppm: float) -> Sprite:
    kind = rng.integers(2)
    img = canvas(0.9, 1.2, ppm)
    ground = img.shape[0] - 0.03 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(ground - y * ppm)

    color = pick(rng, LUGGAGE)
    if kind == 0:  # upright suitcase with telescopic handle
        w, h = rng.uniform(0.35, 0.5), rng.uniform(0.5, 0.75)
        _rrect(img, *P(0, h + 0.05), *P(w, 0.05), color, 0.05 * ppm)
        cv2.line(img, P(0.05, h - 0.1), P(w - 0.05, h - 0.1), rgba(shade(color, 0.7)), 1)
        cv2.rectangle(img, P(w / 2 - 0.08, h + 0.05 + 0.35), P(w / 2 + 0.08, h + 0.05), rgba(DARK), 2)
        for x in (0.05, w - 0.05):
            cv2.circle(img, P(x, 0.03), max(2, int(0.03 * ppm)), rgba(BLACK), -1)
    else:  # hand truck with boxes
        cv2.line(img, P(0.0, 0.05), P(0.05, 1.1), rgba(DARK), max(2, int(0.03 * ppm)))
        cv2.line(img, P(0.0, 0.05), P(0.3, 0.05), rgba(DARK), max(2, int(0.03 * ppm)))
        y = 0.07
        for _ in range(int(rng.integers(1, 4))):
            bh = rng.uniform(0.2, 0.35)
            box = pick(rng, ((60, 120, 170), (70, 140, 190), (200, 200, 200)), 15)
            _rrect(img, *P(0.06, y + bh), *P(rng.uniform(0.4, 0.55), y), box, 0)
            y += bh
        cv2.circle(img, P(0.03, 0.08), max(3, int(0.08 * ppm)), rgba(BLACK), -1)
    return Sprite(img, CLASS_ID["cart"]).trimmed()


def clutter_top(rng: Rng, ppm: float) -> Sprite:
    """Unlabelled floor clutter (shopping bag, backpack, parcel, umbrella): things the detector must
    learn to ignore, seen from any angle."""
    kind = rng.integers(4)
    img = canvas(0.7, 0.7, ppm)
    color = pick(rng, (*LUGGAGE, (220, 220, 220), (60, 160, 60)))
    if kind == 0:
        _rrect(img, 0.2 * ppm, 0.25 * ppm, 0.5 * ppm, 0.45 * ppm, color, 0.03 * ppm)
        cv2.ellipse(img, (int(0.35 * ppm), int(0.25 * ppm)), (int(0.08 * ppm), int(0.06 * ppm)), 0, 180, 360,
                    rgba(shade(color, 0.6)), max(1, int(0.015 * ppm)))
    elif kind == 1:
        cv2.ellipse(img, (int(0.35 * ppm), int(0.35 * ppm)), (int(0.16 * ppm), int(0.12 * ppm)), 0, 0, 360,
                    rgba(color), -1, cv2.LINE_AA)
    elif kind == 2:
        _rrect(img, 0.15 * ppm, 0.2 * ppm, 0.55 * ppm, 0.5 * ppm, (60, 120, 170), 0)
        cv2.line(img, (int(0.15 * ppm), int(0.35 * ppm)), (int(0.55 * ppm), int(0.35 * ppm)), rgba((40, 80, 120)), 2)
    else:
        cv2.line(img, (int(0.05 * ppm), int(0.35 * ppm)), (int(0.65 * ppm), int(0.35 * ppm)), rgba(color),
                 max(2, int(0.04 * ppm)))
    return Sprite(img, -1).trimmed()
