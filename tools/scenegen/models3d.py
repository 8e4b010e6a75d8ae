"""3D models of the six classes (and clutter) built from solids; random proportions and colours.

Local frame: x forward (direction of travel), y left, z up, origin on the floor at the centre.
"""

from __future__ import annotations

from collections.abc import Callable

from tools.corpus import CLASS_ID
from tools.scenegen.draw_mobility import CANOPY, FABRIC, FRAME_COLORS
from tools.scenegen.draw_people import LUGGAGE
from tools.scenegen.draw_twowheel import BLACK, CHROME, DARK
from tools.scenegen.solids import Model
from tools.scenegen.sprite import CLOTHES, HAIR, SCOOTER_COLORS, SKIN, VEHICLE_COLORS, Rng, pick, shade


def ebike(rng: Rng) -> Model:
    """Chinese-style e-bike / moped: fat small wheels, footboard, seat block, shield, basket, box."""
    m = Model()
    length = rng.uniform(1.5, 1.8)
    r = rng.uniform(0.18, 0.25)
    tyre = rng.uniform(0.08, 0.12)
    body = pick(rng, VEHICLE_COLORS)
    rear_x, front_x = -length / 2 + r, length / 2 - r
    for x in (rear_x, front_x):
        m.disc((x, 0, r), r, tyre, BLACK)
        m.disc((x, 0, r), r * 0.45, tyre + 0.01, shade(CHROME, 0.8))
    width = rng.uniform(0.28, 0.36)
    foot_z = rng.uniform(0.25, 0.32)
    m.box((-0.02, 0, foot_z), (0.6, width, 0.06), shade(body, 0.5) if rng.random() < 0.5 else BLACK)
    seat_z = rng.uniform(0.7, 0.8)
    m.box((rear_x + 0.18, 0, (r + seat_z) / 2), (0.55, width, seat_z - r), body)  # body over battery
    m.box((rear_x + 0.2, 0, seat_z + 0.04), (0.5, width * 0.85, 0.08), pick(rng, ((25, 25, 25), (40, 60, 100))))
    shield_top = rng.uniform(0.85, 1.0)
    m.box((front_x - 0.22, 0, (foot_z + shield_top) / 2), (0.12, width * 1.1, shield_top - foot_z), shade(body, 1.1))
    m.tube((front_x, 0, r), (front_x - 0.18, 0, shield_top + 0.1), 0.05, DARK)
    bar = rng.uniform(0.28, 0.36)
    hz = shield_top + 0.12
    m.tube((front_x - 0.2, -bar, hz), (front_x - 0.2, bar, hz), 0.035, DARK)
    for s in (-1, 1):
        m.tube((front_x - 0.2, s * bar, hz), (front_x - 0.2, s * (bar - 0.1), hz), 0.045, BLACK)
        if rng.random() < 0.6:
            m.tube((front_x - 0.22, s * (bar - 0.08), hz), (front_x - 0.28, s * (bar - 0.02), hz + 0.2), 0.015, DARK)
            m.blob((front_x - 0.28, s * (bar - 0.02), hz + 0.22), (0.03, 0.05, 0.035), CHROME)
    m.blob((front_x - 0.12, 0, shield_top - 0.05), (0.05, 0.08, 0.05), (220, 235, 240))  # headlight
    if rng.random() < 0.6:  # front basket
        basket = pick(rng, ((30, 30, 30), (200, 200, 200), (40, 40, 160)))
        m.box((front_x - 0.02, 0, shield_top - 0.08), (0.22, 0.34, 0.2), basket)
    if rng.random() < 0.55:  # rear top box
        box = pick(rng, ((30, 30, 30), (220, 220, 220), (40, 40, 180), (160, 100, 30)))
        m.box((rear_x - 0.05, 0, seat_z + 0.22), (0.36, 0.38, 0.3), box)
    return m


def escooter(rng: Rng) -> Model:
    m = Model()
    length = rng.uniform(1.0, 1.2)
    r = rng.uniform(0.09, 0.12)
    body = pick(rng, SCOOTER_COLORS, 10)
    for x in (-length / 2 + r, length / 2 - r):
        m.disc((x, 0, r), r, 0.06, BLACK)
    m.box((0, 0, r + 0.03), (length - 0.35, 0.17, 0.05), body)
    top = rng.uniform(1.05, 1.2)
    m.tube((length / 2 - r, 0, r), (length / 2 - r - 0.12, 0, top), 0.045, body)
    m.tube((length / 2 - r - 0.12, -0.22, top), (length / 2 - r - 0.12, 0.22, top), 0.035, BLACK)
    return m


def bicycle(rng: Rng) -> Model:
    m = Model()
    r = rng.uniform(0.3, 0.35)
    base = rng.uniform(1.0, 1.1)
    frame = pick(rng, VEHICLE_COLORS)
    rear, front = -base / 2, base / 2
    for x in (rear, front):
        m.disc((x, 0, r), r, 0.035, BLACK, sides=18)
        m.disc((x, 0, r), r * 0.85, 0.01, shade(CHROME, 0.6), sides=18)  # spokes read as a grey disc
    crank = (rear + base * 0.42, 0.0, r - 0.02)
    seat = (rear + base * 0.32, 0.0, r + 0.55)
    head = (rear + base * 0.86, 0.0, r + 0.52)
    for a, b in (((rear, 0, r), crank), (crank, seat), (seat, (rear, 0, r)), (crank, head), (seat, head),
                 (head, (front, 0, r))):
        m.tube(a, b, 0.035, frame)
    m.box((seat[0] - 0.02, 0, seat[2] + 0.12), (0.24, 0.12, 0.05), BLACK)
    bar = rng.uniform(0.22, 0.3)
    m.tube(head, (head[0] - 0.04, 0, head[2] + 0.2), 0.03, DARK)
    m.tube((head[0] - 0.06, -bar, head[2] + 0.2), (head[0] - 0.06, bar, head[2] + 0.2), 0.03, BLACK)
    m.disc(crank, 0.09, 0.02, DARK)
    return m


def wheelchair(rng: Rng) -> Model:
    m = Model()
    seat = rng.uniform(0.42, 0.5)
    r = rng.uniform(0.28, 0.32)
    frame = pick(rng, FRAME_COLORS)
    fabric = pick(rng, FABRIC, 10)
    seat_z = rng.uniform(0.48, 0.52)
    for s in (-1, 1):
        y = s * (seat / 2 + 0.06)
        m.disc((-0.1, y, r), r, 0.04, BLACK, sides=18)
        m.disc((-0.1, y + s * 0.03, r), r * 0.88, 0.01, CHROME, sides=18)  # handrim
        m.disc((0.32, s * (seat / 2 - 0.02), 0.07), 0.07, 0.04, BLACK)  # caster
        m.tube((-0.25, s * seat / 2, seat_z + 0.42), (-0.33, s * seat / 2, seat_z + 0.45), 0.035, BLACK)  # handle
        m.tube((0.2, s * seat / 2, seat_z), (0.35, s * 0.14, 0.1), 0.025, frame)  # leg rest
        m.box((0.38, s * 0.1, 0.08), (0.12, 0.14, 0.02), DARK)  # footplate
        m.tube((-0.22, s * seat / 2, seat_z), (0.22, s * seat / 2, seat_z), 0.025, frame)
        m.tube((0.15, s * seat / 2, seat_z), (0.32, s * (seat / 2 - 0.02), 0.12), 0.025, frame)
    m.box((0.0, 0, seat_z), (seat, seat, 0.05), fabric)
    m.box((-0.23, 0, seat_z + 0.22), (0.04, seat, 0.42), fabric)
    return m


def stroller(rng: Rng) -> Model:
    m = Model()
    length = rng.uniform(0.75, 0.9)
    width = rng.uniform(0.45, 0.55)
    canopy = pick(rng, CANOPY)
    frame = pick(rng, ((30, 30, 30), (180, 180, 185), (60, 60, 60)), 10)
    wr = rng.uniform(0.06, 0.09)
    for x in (-length / 2, length / 2):
        for s in (-1, 1):
            m.disc((x, s * width / 2, wr), wr, 0.04, BLACK)
            m.tube((x, s * width / 2, wr), (x * 0.4, s * width / 2.2, 0.5), 0.025, frame)
    body_z = rng.uniform(0.5, 0.6)
    m.box((0.02, 0, body_z + 0.1), (length * 0.75, width * 0.9, 0.22), shade(canopy, 0.8))
    m.blob((length * 0.22, 0, body_z + 0.22), (length * 0.28, width * 0.47, 0.3), canopy)  # canopy hood
    hz = body_z + rng.uniform(0.4, 0.5)
    for s in (-1, 1):
        m.tube((-length * 0.35, s * width * 0.4, body_z), (-length / 2 - 0.15, s * width * 0.4, hz), 0.025, frame)
    m.tube((-length / 2 - 0.15, -width * 0.42, hz), (-length / 2 - 0.15, width * 0.42, hz), 0.04, BLACK)
    if rng.random() < 0.5:
        m.box((0, 0, 0.2), (length * 0.6, width * 0.7, 0.12), DARK)  # basket under the seat
    return m


def person(rng: Rng, seated: bool = False) -> Model:
    m = Model()
    top, legs = pick(rng, CLOTHES), pick(rng, CLOTHES)
    skin, hair = pick(rng, SKIN, 10), pick(rng, HAIR, 8)
    h = rng.uniform(1.55, 1.85)
    sh = rng.uniform(0.19, 0.24)  # half shoulder width
    if seated:
        hip = 0.55
        for s in (-1, 1):
            m.tube((0.0, s * 0.1, hip), (0.4, s * 0.1, hip), 0.13, legs)
            m.tube((0.4, s * 0.1, hip), (0.42, s * 0.1, 0.12), 0.11, legs)
        chest = hip + 0.45
    else:
        hip = h * 0.5
        for s in (-1, 1):
            m.tube((0.0, s * 0.1, hip), (rng.uniform(-0.1, 0.1), s * 0.1, 0.05), 0.13, legs)
            m.box((0.05, s * 0.1, 0.04), (0.25, 0.1, 0.08), BLACK)
        chest = h - 0.35
    m.blob((0.0, 0, (hip + chest) / 2 + 0.05), (0.13, sh, (chest - hip) / 2 + 0.08), top)
    reach = rng.uniform(0.0, 0.4)  # arms forward when pushing something
    for s in (-1, 1):
        m.tube((0.0, s * sh, chest), (reach, s * (sh - 0.02), chest - 0.3 + reach * 0.3), 0.09, top)
    head_z = chest + 0.24
    m.blob((0.0, 0, head_z), (0.1, 0.085, 0.12), skin)
    m.blob((-0.02, 0, head_z + 0.04), (0.1, 0.09, 0.09), hair)
    if rng.random() < 0.3:  # backpack
        m.box((-0.18, 0, chest - 0.15), (0.14, 0.3, 0.38), pick(rng, LUGGAGE))
    return m


def cart(rng: Rng) -> Model:
    m = Model()
    color = pick(rng, LUGGAGE)
    kind = rng.integers(3)
    if kind == 0:  # upright suitcase with handle
        w, d, hgt = rng.uniform(0.35, 0.5), rng.uniform(0.22, 0.3), rng.uniform(0.5, 0.75)
        m.box((0, 0, hgt / 2 + 0.05), (d, w, hgt), color)
        m.tube((-d / 2 + 0.03, 0, hgt + 0.05), (-d / 2 + 0.03, 0, hgt + 0.4), 0.03, DARK)
        for s in (-1, 1):
            m.disc((-d / 2 + 0.04, s * (w / 2 - 0.04), 0.03), 0.03, 0.03, BLACK)
    elif kind == 1:  # trolley with boxes
        m.box((0, 0, 0.06), (0.6, 0.45, 0.04), DARK)
        z = 0.08
        for _ in range(int(rng.integers(1, 4))):
            bh = rng.uniform(0.2, 0.35)
            m.box((0.02, 0, z + bh / 2), (rng.uniform(0.4, 0.55), rng.uniform(0.3, 0.42), bh),
                  pick(rng, ((60, 120, 170), (70, 140, 190), (200, 200, 200)), 15))
            z += bh
        m.tube((-0.3, -0.2, 0.06), (-0.3, -0.2, 1.0), 0.03, DARK)
        m.tube((-0.3, 0.2, 0.06), (-0.3, 0.2, 1.0), 0.03, DARK)
        m.tube((-0.3, -0.2, 1.0), (-0.3, 0.2, 1.0), 0.035, BLACK)
        for x in (-0.25, 0.25):
            for s in (-1, 1):
                m.disc((x, s * 0.2, 0.04), 0.04, 0.03, BLACK)
    else:  # shopping cart: wire basket as translucent-looking thin frame
        c = pick(rng, ((180, 180, 185), (40, 40, 160), (60, 60, 60)), 10)
        lx, ly, z0, z1 = 0.7, 0.45, 0.45, 0.9
        corners = [(-lx / 2, -ly / 2), (lx / 2, -ly / 2), (lx / 2, ly / 2), (-lx / 2, ly / 2)]
        for i in range(4):
            (ax, ay), (bx, by) = corners[i], corners[(i + 1) % 4]
            for z in (z0, (z0 + z1) / 2, z1):
                m.tube((ax, ay, z), (bx, by, z), 0.015, c)
            m.tube((ax, ay, z0), (ax, ay, z1), 0.015, c)
            m.tube((ax, ay, z0), (ax * 0.8, ay, 0.08), 0.02, c)
            m.disc((ax * 0.8, ay, 0.06), 0.06, 0.03, BLACK)
        m.tube((-lx / 2 - 0.1, -ly / 2, z1 + 0.05), (-lx / 2 - 0.1, ly / 2, z1 + 0.05), 0.035, BLACK)
    return m


def clutter(rng: Rng) -> Model:
    m = Model()
    color = pick(rng, (*LUGGAGE, (220, 220, 220), (60, 160, 60)))
    if rng.random() < 0.5:
        m.box((0, 0, 0.15), (0.12, 0.3, 0.3), color)  # shopping bag
    else:
        m.blob((0, 0, 0.12), (0.15, 0.2, 0.12), color)  # sack / backpack on the floor
    return m


BUILDERS: dict[int, Callable[[Rng], Model]] = {
    CLASS_ID["ebike"]: ebike,
    CLASS_ID["bicycle"]: bicycle,
    CLASS_ID["wheelchair"]: wheelchair,
    CLASS_ID["stroller"]: stroller,
    CLASS_ID["person"]: person,
    CLASS_ID["cart"]: cart,
    -1: clutter,
}


def build(rng: Rng, cls: int, seated: bool = False, escooter_share: float = 0.2) -> Model:
    if cls == CLASS_ID["person"]:
        return person(rng, seated)
    if cls == CLASS_ID["ebike"] and rng.random() < escooter_share:
        return escooter(rng)
    return BUILDERS[cls](rng)

