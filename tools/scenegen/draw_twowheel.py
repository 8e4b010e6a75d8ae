"""Procedural e-bikes / e-scooters / mopeds and pedal bicycles, seen from above and from the side.

What separates them for the detector (and so what is drawn with care): an e-bike is long and
narrow with a wide step-through footboard, small *thick* wheels, a seat block, often a front basket,
a rear box and a battery; a bicycle has *thin* large wheels, a thin tube frame and no footboard.
Top views have the vehicle's length along x; side views face right.
"""

from __future__ import annotations

import cv2
import numpy as np

from tools.corpus import CLASS_ID
from tools.scenegen.sprite import SCOOTER_COLORS, VEHICLE_COLORS, Rng, Sprite, canvas, jitter, pick, rgba, shade

BLACK = (25, 25, 28)
DARK = (50, 50, 55)
CHROME = (190, 190, 195)


def _rrect(img: np.ndarray, x1: float, y1: float, x2: float, y2: float, color: tuple[int, int, int],
           radius: float = 0.0) -> None:
    """Filled rectangle with rounded corners (pixel coordinates)."""
    r = int(max(0, min(radius, (x2 - x1) / 2, (y2 - y1) / 2)))
    c = rgba(color)
    ix1, iy1, ix2, iy2 = int(x1), int(y1), int(x2), int(y2)
    if r <= 1:
        cv2.rectangle(img, (ix1, iy1), (ix2, iy2), c, -1)
        return
    cv2.rectangle(img, (ix1 + r, iy1), (ix2 - r, iy2), c, -1)
    cv2.rectangle(img, (ix1, iy1 + r), (ix2, iy2 - r), c, -1)
    for cx, cy in ((ix1 + r, iy1 + r), (ix2 - r, iy1 + r), (ix1 + r, iy2 - r), (ix2 - r, iy2 - r)):
        cv2.circle(img, (cx, cy), r, c, -1, cv2.LINE_AA)


def ebike_top(rng: Rng, ppm: float) -> Sprite:
    length = rng.uniform(1.5, 1.85)
    body_w = rng.uniform(0.26, 0.36)
    bar_w = rng.uniform(0.55, 0.72)
    img = canvas(length + 0.2, bar_w + 0.2, ppm)
    cy = float(img.shape[0]) / 2

    def X(m: float) -> float:
        return (m + 0.1) * ppm

    def Y(m: float) -> float:
        return cy + m * ppm

    body = pick(rng, VEHICLE_COLORS)
    tyre_w = rng.uniform(0.08, 0.12)  # small fat tyres: the e-bike tell
    wheel_len = rng.uniform(0.28, 0.4)
    for x0 in (0.0, length - wheel_len):
        _rrect(img, X(x0), Y(-tyre_w / 2), X(x0 + wheel_len), Y(tyre_w / 2), BLACK, tyre_w * ppm / 2)
    # Main body and footboard: wide in the middle, where the rider's feet go.
    _rrect(img, X(0.25), Y(-body_w / 2), X(length - 0.3), Y(body_w / 2), body, 0.08 * ppm)
    foot = shade(body, 0.35) if rng.random() < 0.6 else BLACK
    _rrect(img, X(0.65), Y(-body_w / 2 + 0.03), X(length - 0.55), Y(body_w / 2 - 0.03), foot, 0.03 * ppm)
    for k in range(int(rng.integers(3, 7))):  # rubber ribs on the footboard
        x = 0.7 + k * 0.06
        if x < length - 0.6:
            cv2.line(img, (int(X(x)), int(Y(-body_w / 2 + 0.05))), (int(X(x)), int(Y(body_w / 2 - 0.05))),
                     rgba(shade(foot, 1.6)), 1)
    # Seat over the battery, towards the back.
    seat = pick(rng, ((20, 20, 20), (40, 60, 100), (60, 60, 60)), 10)
    sl = rng.uniform(0.42, 0.6)
    cv2.ellipse(img, (int(X(0.3 + sl / 2)), int(cy)), (int(sl / 2 * ppm), int(body_w * 0.45 * ppm)), 0, 0, 360,
                rgba(seat), -1, cv2.LINE_AA)
    if rng.random() < 0.55:  # rear top box
        bw = rng.uniform(0.3, 0.42)
        box = pick(rng, ((30, 30, 30), (220, 220, 220), (40, 40, 180), (160, 100, 30)))
        _rrect(img, X(0.0), Y(-bw / 2), X(rng.uniform(0.3, 0.4)), Y(bw / 2), box, 0.05 * ppm)
    # Front shield and handlebar with grips and mirrors.
    hx = length - rng.uniform(0.3, 0.4)
    _rrect(img, X(hx - 0.12), Y(-body_w * 0.55), X(hx + 0.05), Y(body_w * 0.55), shade(body, 1.15), 0.05 * ppm)
    thick = max(2, int(0.035 * ppm))
    cv2.line(img, (int(X(hx)), int(Y(-bar_w / 2))), (int(X(hx)), int(Y(bar_w / 2))), rgba(DARK), thick, cv2.LINE_AA)
    for s in (-1, 1):
        cv2.line(img, (int(X(hx)), int(Y(s * bar_w / 2))), (int(X(hx)), int(Y(s * (bar_w / 2 - 0.1)))),
                 rgba(BLACK), thick + 2)
        if rng.random() < 0.6:
            cv2.circle(img, (int(X(hx - 0.05)), int(Y(s * (bar_w / 2 - 0.05)))), max(2, int(0.04 * ppm)),
                       rgba(CHROME), -1, cv2.LINE_AA)
    if rng.random() < 0.6:  # front basket: a grid
        bl, bw = rng.uniform(0.2, 0.3), rng.uniform(0.3, 0.4)
        x1, x2 = X(hx + 0.04), X(hx + 0.04 + bl)
        basket = pick(rng, ((30, 30, 30), (200, 200, 200), (40, 40, 160)))
        cv2.rectangle(img, (int(x1), int(Y(-bw / 2))), (int(x2), int(Y(bw / 2))), rgba(basket), max(2, int(0.02 * ppm)))
        step = max(3, int(0.05 * ppm))
        for x in range(int(x1), int(x2), step):
            cv2.line(img, (x, int(Y(-bw / 2))), (x, int(Y(bw / 2))), rgba(basket), 1)
        for y in range(int(Y(-bw / 2)), int(Y(bw / 2)), step):
            cv2.line(img, (int(x1), y), (int(x2), y), rgba(basket), 1)
    return Sprite(img, CLASS_ID["ebike"]).trimmed()


def ebike_side(rng: Rng, ppm: float) -> Sprite:
    length = rng.uniform(1.5, 1.85)
    height = rng.uniform(1.0, 1.2)
    img = canvas(length + 0.3, height + 0.2, ppm)
    ground = img.shape[0] - 0.05 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(ground - y * ppm)

    body = pick(rng, VEHICLE_COLORS)
    r = rng.uniform(0.18, 0.25)
    tyre = max(3, int(rng.uniform(0.06, 0.09) * ppm))
    rear_x, front_x = r, length - r
    # Body: rear fender/seat block, low footboard, rising front column.
    seat_h = rng.uniform(0.72, 0.82)
    foot_h = rng.uniform(0.25, 0.33)
    poly = np.array([
        P(rear_x - r * 0.9, r + 0.1), P(rear_x - r * 0.6, seat_h - 0.05), P(rear_x + 0.55, seat_h - 0.05),
        P(rear_x + 0.6, foot_h + 0.02), P(front_x - 0.45, foot_h + 0.02), P(front_x - 0.25, height - 0.2),
        P(front_x - 0.12, height - 0.2), P(front_x - 0.05, r + 0.1), P(front_x - 0.35, foot_h - 0.06),
        P(rear_x + 0.2, foot_h - 0.06), P(rear_x + r, r + 0.05),
    ], np.int32)
    cv2.fillPoly(img, [poly], rgba(body), cv2.LINE_AA)
    cv2.line(img, P(rear_x + 0.6, foot_h), P(front_x - 0.45, foot_h), rgba(BLACK), max(2, int(0.03 * ppm)))
    seat = pick(rng, ((20, 20, 20), (40, 60, 100)), 10)
    cv2.ellipse(img, P(rear_x + 0.22, seat_h), (int(0.3 * ppm), int(0.06 * ppm)), 0, 0, 360, rgba(seat), -1,
                cv2.LINE_AA)
    # Steering column, handlebar, headlight.
    top = P(front_x - 0.2, height)
    cv2.line(img, P(front_x, r), top, rgba(DARK), max(2, int(0.04 * ppm)), cv2.LINE_AA)
    cv2.line(img, top, P(front_x - 0.4, height + 0.02), rgba(BLACK), max(2, int(0.035 * ppm)), cv2.LINE_AA)
    cv2.circle(img, P(front_x - 0.08, height - 0.12), max(2, int(0.05 * ppm)), rgba((210, 230, 240)), -1)
    if rng.random() < 0.6:
        bw = rng.uniform(0.22, 0.3)
        x0, y0 = P(front_x - 0.1, height - 0.15)
        basket = pick(rng, ((30, 30, 30), (200, 200, 200), (40, 40, 160)))
        cv2.rectangle(img, (x0, y0 - int(0.2 * ppm)), (x0 + int(bw * ppm), y0), rgba(basket), max(2, int(0.02 * ppm)))
        for k in range(1, 4):
            x = x0 + int(k * bw * ppm / 4)
            cv2.line(img, (x, y0 - int(0.2 * ppm)), (x, y0), rgba(basket), 1)
    if rng.random() < 0.55:
        box = pick(rng, ((30, 30, 30), (220, 220, 220), (40, 40, 180)))
        x0, y0 = P(rear_x - r, seat_h + 0.02)
        cv2.rectangle(img, (x0, y0 - int(0.32 * ppm)), (x0 + int(0.38 * ppm), y0), rgba(box), -1)
    for wx in (rear_x, front_x):  # small fat wheels, hub visible
        cv2.circle(img, P(wx, r), int(r * ppm - tyre / 2), rgba(BLACK), tyre, cv2.LINE_AA)
        cv2.circle(img, P(wx, r), max(2, int(r * ppm * 0.45)), rgba(shade(CHROME, rng.uniform(0.6, 1))), -1)
    return Sprite(img, CLASS_ID["ebike"]).trimmed()


def bicycle_top(rng: Rng, ppm: float) -> Sprite:
    length = rng.uniform(1.6, 1.8)
    bar_w = rng.uniform(0.42, 0.6)
    img = canvas(length + 0.2, bar_w + 0.2, ppm)
    cy = img.shape[0] / 2

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(cy + y * ppm)

    frame = pick(rng, VEHICLE_COLORS)
    wheel = rng.uniform(0.6, 0.7)
    tyre = max(1, int(0.025 * ppm))  # thin tyres seen edge-on
    cv2.line(img, P(0, 0), P(wheel, 0), rgba(BLACK), tyre + 1)
    cv2.line(img, P(length - wheel, 0), P(length, 0), rgba(BLACK), tyre + 1)
    cv2.line(img, P(wheel / 2, 0), P(length - wheel / 2 - 0.1, 0), rgba(frame), max(2, int(0.035 * ppm)))
    hx = length - wheel / 2 - 0.08
    cv2.line(img, P(hx, -bar_w / 2), P(hx, bar_w / 2), rgba(DARK), max(2, int(0.025 * ppm)), cv2.LINE_AA)
    cv2.ellipse(img, P(wheel / 2 + 0.12, 0), (int(0.12 * ppm), int(0.05 * ppm)), 0, 0, 360, rgba(BLACK), -1)
    for s in (-1, 1):  # pedals stick out to both sides
        cv2.line(img, P(length / 2 - 0.1, 0), P(length / 2 - 0.1 + s * 0.05, s * 0.14), rgba(DARK), 2)
    if rng.random() < 0.25:
        cv2.rectangle(img, P(length - 0.3, -0.15), P(length - 0.1, 0.15), rgba(DARK), 1)
    return Sprite(img, CLASS_ID["bicycle"]).trimmed()


def bicycle_side(rng: Rng, ppm: float) -> Sprite:
    r = rng.uniform(0.3, 0.36)
    wheelbase = rng.uniform(1.0, 1.12)
    img = canvas(wheelbase + 2 * r + 0.25, 1.25, ppm)
    ground = img.shape[0] - 0.04 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + r + 0.1) * ppm), int(ground - y * ppm)

    frame = pick(rng, VEHICLE_COLORS)
    t = max(2, int(0.03 * ppm))
    rear, front = (0.0, r), (wheelbase, r)
    crank = (wheelbase * 0.42, r - 0.02)
    seat = (wheelbase * 0.32, r + 0.58)
    head = (wheelbase * 0.86, r + 0.55)
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (crank, head), (seat, head), (head, front)):
        cv2.line(img, P(*a), P(*b), rgba(frame), t, cv2.LINE_AA)
    cv2.line(img, P(*seat), P(seat[0] - 0.02, seat[1] + 0.12), rgba(DARK), t)
    cv2.ellipse(img, P(seat[0] - 0.02, seat[1] + 0.14), (int(0.12 * ppm), int(0.03 * ppm)), 0, 0, 360, rgba(BLACK), -1)
    cv2.line(img, P(*head), P(head[0] - 0.05, head[1] + 0.2), rgba(DARK), t)
    cv2.line(img, P(head[0] - 0.05, head[1] + 0.2), P(head[0] - 0.2, head[1] + 0.22), rgba(BLACK), t + 1)
    spoke = rgba(jitter(rng, CHROME, 20))
    for cx, cy in (rear, front):  # large thin wheels with spokes
        c = P(cx, cy)
        cv2.circle(img, c, int(r * ppm), rgba(BLACK), max(2, int(0.03 * ppm)), cv2.LINE_AA)
        for k in range(8):
            ang = k * np.pi / 8
            d = (int(np.cos(ang) * r * ppm * 0.95), int(np.sin(ang) * r * ppm * 0.95))
            cv2.line(img, (c[0] - d[0], c[1] - d[1]), (c[0] + d[0], c[1] + d[1]), spoke, 1)
    cv2.circle(img, P(*crank), max(2, int(0.08 * ppm)), rgba(DARK), 2)
    return Sprite(img, CLASS_ID["bicycle"]).trimmed()


def escooter_top(rng: Rng, ppm: float) -> Sprite:
    """Stand-up e-scooter from above: narrow deck, one stem, T handlebar; small solid wheels."""
    length = rng.uniform(1.0, 1.2)
    bar_w = rng.uniform(0.4, 0.55)
    img = canvas(length + 0.2, bar_w + 0.2, ppm)
    cy = img.shape[0] / 2

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(cy + y * ppm)

    body = pick(rng, SCOOTER_COLORS, 10)
    deck_w = rng.uniform(0.14, 0.2)
    for x0 in (0.0, length - 0.22):
        _rrect(img, *P(x0, -0.03), *P(x0 + 0.22, 0.03), BLACK, 0.02 * ppm)
    _rrect(img, *P(0.12, -deck_w / 2), *P(length - 0.2, deck_w / 2), body, 0.03 * ppm)
    _rrect(img, *P(0.2, -deck_w / 2 + 0.02), *P(length - 0.3, deck_w / 2 - 0.02), BLACK, 0.02 * ppm)
    hx = length - 0.12
    cv2.line(img, P(hx, -bar_w / 2), P(hx, bar_w / 2), rgba(DARK), max(2, int(0.03 * ppm)), cv2.LINE_AA)
    cv2.circle(img, P(hx, 0), max(2, int(0.03 * ppm)), rgba(body), -1)
    return Sprite(img, CLASS_ID["ebike"]).trimmed()


def escooter_side(rng: Rng, ppm: float) -> Sprite:
    length = rng.uniform(1.0, 1.2)
    height = rng.uniform(1.05, 1.2)
    img = canvas(length + 0.2, height + 0.1, ppm)
    ground = img.shape[0] - 0.03 * ppm

    def P(x: float, y: float) -> tuple[int, int]:
        return int((x + 0.1) * ppm), int(ground - y * ppm)

    body = pick(rng, SCOOTER_COLORS, 10)
    r = rng.uniform(0.09, 0.12)
    cv2.line(img, P(r, r), P(length - r - 0.05, r), rgba(body), max(3, int(0.06 * ppm)))  # deck
    cv2.line(img, P(length - r, r), P(length - r - 0.12, height), rgba(DARK), max(2, int(0.035 * ppm)), cv2.LINE_AA)
    cv2.line(img, P(length - r - 0.22, height), P(length - r - 0.02, height), rgba(BLACK), max(2, int(0.03 * ppm)))
    for x in (r, length - r):
        cv2.circle(img, P(x, r), int(r * ppm), rgba(BLACK), -1, cv2.LINE_AA)
        cv2.circle(img, P(x, r), max(1, int(r * ppm * 0.4)), rgba(CHROME), -1)
    return Sprite(img, CLASS_ID["ebike"]).trimmed()
