"""Which object to draw: the procedural drawers per class and view, and their physical sizes."""

from __future__ import annotations

from collections.abc import Callable

from tools.corpus import CLASS_ID
from tools.scenegen import draw_mobility as mob
from tools.scenegen import draw_people as ppl
from tools.scenegen import draw_twowheel as tw
from tools.scenegen.sprite import Rng, Sprite

SPRITE_PPM = 110.0  # drawing resolution of procedural sprites, pixels per metre
Drawer = Callable[[Rng, float], Sprite]

TOP: dict[int, Drawer] = {
    CLASS_ID["ebike"]: tw.ebike_top,
    CLASS_ID["bicycle"]: tw.bicycle_top,
    CLASS_ID["wheelchair"]: mob.wheelchair_top,
    CLASS_ID["stroller"]: mob.stroller_top,
    CLASS_ID["person"]: ppl.person_top,
    CLASS_ID["cart"]: ppl.cart_top,
}
SIDE: dict[int, Drawer] = {
    CLASS_ID["ebike"]: tw.ebike_side,
    CLASS_ID["bicycle"]: tw.bicycle_side,
    CLASS_ID["wheelchair"]: mob.wheelchair_side,
    CLASS_ID["stroller"]: mob.stroller_side,
    CLASS_ID["person"]: ppl.person_side,
    CLASS_ID["cart"]: ppl.cart_side,
}
# Share of e-bikes drawn as stand-up e-scooters (the rest: seated e-bikes / mopeds).
ESCOOTER_SHARE = 0.2
ESCOOTER_TOP: Drawer = tw.escooter_top
ESCOOTER_SIDE: Drawer = tw.escooter_side
CLUTTER_TOP: Drawer = ppl.clutter_top

# Typical upright height (m) of a real object: sets the size of pasted real cut-outs.
HEIGHT_M: dict[int, float] = {
    CLASS_ID["ebike"]: 1.1, CLASS_ID["bicycle"]: 1.0, CLASS_ID["wheelchair"]: 0.95,
    CLASS_ID["stroller"]: 1.0, CLASS_ID["person"]: 1.7, CLASS_ID["cart"]: 0.8,
}
# Typical plan-view length (m), for cut-outs lying in a top-down view.
LENGTH_M: dict[int, float] = {
    CLASS_ID["ebike"]: 1.7, CLASS_ID["bicycle"]: 1.7, CLASS_ID["wheelchair"]: 1.05,
    CLASS_ID["stroller"]: 0.9, CLASS_ID["person"]: 0.5, CLASS_ID["cart"]: 0.6,
}
# Height (m) of the part of the object a ceiling camera sees, for top-down magnification.
TOP_Z_M: dict[int, float] = {
    CLASS_ID["ebike"]: 0.8, CLASS_ID["bicycle"]: 0.8, CLASS_ID["wheelchair"]: 0.6,
    CLASS_ID["stroller"]: 0.8, CLASS_ID["person"]: 1.25, CLASS_ID["cart"]: 0.5, -1: 0.15,
}
# Relative frequency of the "main" object of a scene; e-bikes and the never-block classes dominate.
MAIN_WEIGHTS: dict[int, float] = {
    CLASS_ID["ebike"]: 0.34, CLASS_ID["bicycle"]: 0.14, CLASS_ID["wheelchair"]: 0.2,
    CLASS_ID["stroller"]: 0.18, CLASS_ID["cart"]: 0.14,
}
