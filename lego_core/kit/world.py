"""A synthetic egocentric kitchen in which only the action decides the change.

The bundled demo and the learning test need a world where the method can be *seen* to work on two
CPU cores: given the frame before an action and the action's label, the frame of the action is
fully determined, and nothing else in the picture gives it away. So, in every clip:

- a few objects stand at random places on the counter (a new layout per clip);
- in the input frame both hands rest at the bottom corners; between the input frame and the
  action frame only the acting hand moves — to the object — and only the object changes, into the
  verb's end state (cut → pieces, open / close → the door or drawer's state, pick up → lifted in
  the hand, wash → water over it, turn on → water from the tap);
- the acting hand is the one on the object's side (object left of centre → left hand), so it can
  be read from the frame; the labels are verb + noun only ("cut onion", "open fridge").

Each end state differs from what it covers by at least 0.25 (0–1 scale, mean over RGB; a kit test
checks every object × verb). No frame-index band: it would dominate changed-pixel metrics.
Rendering is numpy + PIL only (no torch); `world_data.py` turns clips into videos and annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# verbs, each with the objects it applies to; "open"/"close" apply to a door in the other state
VERBS = ("cut", "pick up", "wash", "open", "close", "turn on")
OBJECTS = {
    # name: (kind, footprint width, height as fractions of the frame, verbs)
    "onion": ("food", 0.13, 0.17, ("cut", "pick up", "wash")),
    "tomato": ("food", 0.13, 0.17, ("cut", "pick up", "wash")),
    "carrot": ("food", 0.20, 0.10, ("cut", "pick up", "wash")),
    "cup": ("dish", 0.10, 0.19, ("pick up", "wash")),
    "plate": ("dish", 0.20, 0.14, ("pick up", "wash")),
    "drawer": ("door", 0.22, 0.20, ("open", "close")),
    "fridge": ("door", 0.20, 0.55, ("open", "close")),
    "tap": ("tap", 0.16, 0.30, ("turn on",)),
}
WALL_END = 0.36           # the wall above, the counter below
COUNTER_BOTTOM = 0.79     # objects stand above this line; the hands rest below it
REST = ((0.13, 0.89), (0.87, 0.89))  # left and right palm centres at rest
PALM = (0.085, 0.14)

_C = {   # a dark slate counter, so every object and end state stands out from it
    "wall": (200, 206, 212), "counter": (70, 80, 95), "skin": (230, 178, 146), "sleeve": (150, 40, 45),
    "onion": (200, 120, 190), "onion_in": (250, 240, 248), "tomato": (230, 45, 40), "tomato_in": (250, 205, 90),
    "carrot": (245, 135, 25), "carrot_in": (255, 232, 160), "cup": (240, 200, 40), "cup_in": (120, 90, 10),
    "plate": (248, 248, 244), "rim": (180, 180, 190), "wood": (214, 170, 110), "handle": (40, 35, 30),
    "cavity": (30, 22, 18), "fridge": (236, 240, 242), "inside": (45, 55, 75), "steel": (150, 155, 165),
    "sink": (120, 130, 140), "water": (25, 95, 255), "foam": (255, 255, 255), "blade": (215, 220, 228),
}


@dataclass
class Placed:
    name: str
    box: tuple[float, float, float, float]       # footprint, relative x0, y0, x1, y1
    is_open: bool = False                          # doors: their state in the input frame

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def side(self) -> str:
        """Which hand acts on it, and where it is: 'left', 'centre', 'right' in thirds."""
        x = self.centre[0]
        return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"

    @property
    def hand(self) -> str:
        return "left" if self.centre[0] < 0.5 else "right"

    def verbs(self) -> tuple[str, ...]:
        kind, _, _, verbs = OBJECTS[self.name]
        if kind == "door":
            return ("close",) if self.is_open else ("open",)
        return verbs


@dataclass
class Layout:
    """One clip's scene: its objects, colour tint and hand rest positions."""
    objects: list[Placed]
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rest: tuple[tuple[float, float], tuple[float, float]] = REST
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def find(self, name: str) -> Placed:
        return next(o for o in self.objects if o.name == name)

    def actions(self) -> list[tuple[str, str]]:
        """Every (verb, object) that makes sense in this layout."""
        return [(v, o.name) for o in self.objects for v in o.verbs()]


def make_layout(rng: np.random.Generator, objects: tuple[str, ...], n_objects: int,
                place_margin: float = 0.0) -> Layout:
    """Random non-overlapping placement of `n_objects` of `objects` along the counter; with
    `place_margin`, no object's centre lies within that distance of a third's edge, so whether it is
    on the left, in the centre or on the right can be read from the frame."""
    names = [str(n) for n in rng.choice(list(objects), size=min(n_objects, len(objects)), replace=False)]
    placed: list[Placed] = []
    for name in names:
        kind, w, h, _ = OBJECTS[name]
        for _ in range(200):
            x0 = float(rng.uniform(0.03, 0.97 - w))
            if kind == "tap":
                y0 = WALL_END - 0.2
            elif kind == "door" and name == "fridge":
                y0 = COUNTER_BOTTOM - h - float(rng.uniform(0.0, 0.04))
            else:
                y0 = float(rng.uniform(WALL_END + 0.04, COUNTER_BOTTOM - h))
            box = (x0, y0, x0 + w, y0 + h)
            legible = all(abs(x0 + w / 2 - edge) >= place_margin for edge in (1 / 3, 2 / 3))
            # keep a gap, and leave room above food and dishes for "pick up"
            if legible and all(box[2] + 0.03 < p.box[0] or p.box[2] + 0.03 < box[0] for p in placed):
                break
        else:
            continue
        placed.append(Placed(name, box, is_open=kind == "door" and bool(rng.random() < 0.5)))
    tint = tuple(float(v) for v in rng.uniform(0.93, 1.07, size=3))
    jitter = rng.uniform(-0.02, 0.02, size=4)
    # mirrored in x, so the hand nearer an object is always the one on its side of the centre line
    rest = ((REST[0][0] + jitter[0], REST[0][1] + jitter[1]), (REST[1][0] - jitter[0], REST[1][1] + jitter[3]))
    return Layout(placed, tint=tint, rest=rest)


# -------------------------------------------------------------------------------------------------
# Drawing
# -------------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, width: int, height: int, tint):
        self.w, self.h, self.tint = width, height, tint
        self.img = Image.new("RGB", (width, height))
        self.d = ImageDraw.Draw(self.img)

    def px(self, box):
        x0, y0, x1, y1 = box
        return [round(x0 * self.w), round(y0 * self.h), max(round(x0 * self.w), round(x1 * self.w) - 1),
                max(round(y0 * self.h), round(y1 * self.h) - 1)]

    def col(self, name: str):
        return tuple(int(min(255, c * t)) for c, t in zip(_C[name], self.tint))

    def rect(self, box, colour):
        self.d.rectangle(self.px(box), fill=self.col(colour))

    def ellipse(self, box, colour):
        self.d.ellipse(self.px(box), fill=self.col(colour))


def _background(c: _Canvas) -> None:
    c.rect((0, 0, 1, WALL_END), "wall")
    c.rect((0, WALL_END, 1, 1), "counter")
    c.rect((0, WALL_END, 1, WALL_END + 0.015), "rim")


def _food(c: _Canvas, o: Placed, box, cut: bool) -> None:
    x0, y0, x1, y1 = box
    skin, inside = o.name, f"{o.name}_in"
    if not cut:
        (c.rect if o.name == "carrot" else c.ellipse)(box, skin)
        return
    # pieces spread over the footprint (wider than the whole): cut faces show the inside
    n, gap = 3, (x1 - x0) * 0.18
    pw = (x1 - x0 + 2 * gap) / n
    for k in range(n):
        px0 = x0 - gap + k * pw
        piece = (px0 + 0.1 * pw, y0 + 0.15 * (y1 - y0), px0 + 0.9 * pw, y1)
        c.ellipse(piece, skin)
        a, b, e, f = piece
        c.ellipse((a + 0.2 * (e - a), b + 0.2 * (f - b), e - 0.2 * (e - a), f - 0.2 * (f - b)), inside)


def _dish(c: _Canvas, o: Placed, box) -> None:
    x0, y0, x1, y1 = box
    if o.name == "cup":
        c.rect((x0, y0 + 0.15 * (y1 - y0), x1, y1), "cup")
        c.ellipse((x0, y0, x1, y0 + 0.3 * (y1 - y0)), "cup_in")
    else:
        c.ellipse(box, "rim")
        c.ellipse((x0 + 0.12 * (x1 - x0), y0 + 0.15 * (y1 - y0), x1 - 0.12 * (x1 - x0), y1 - 0.15 * (y1 - y0)), "plate")


def _door(c: _Canvas, o: Placed, box, is_open: bool) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if o.name == "drawer":
        c.rect(box, "wood")
        if is_open:
            c.rect((x0 + 0.06 * w, y0 + 0.06 * h, x1 - 0.06 * w, y0 + 0.6 * h), "cavity")
            c.rect((x0 - 0.04 * w, y0 + 0.6 * h, x1 + 0.04 * w, y1 + 0.08 * h), "wood")
            c.rect((x0 + 0.35 * w, y0 + 0.8 * h, x1 - 0.35 * w, y0 + 0.9 * h), "handle")
        else:
            c.rect((x0 + 0.35 * w, y0 + 0.45 * h, x1 - 0.35 * w, y0 + 0.57 * h), "handle")
        return
    c.rect(box, "fridge")
    if is_open:
        c.rect((x0 + 0.05 * w, y0 + 0.03 * h, x1 - 0.05 * w, y1 - 0.03 * h), "inside")
        for k, colour in enumerate(("tomato", "carrot", "onion_in")):
            yy = y0 + (0.2 + 0.25 * k) * h
            c.rect((x0 + 0.1 * w, yy, x1 - 0.1 * w, yy + 0.03 * h), "steel")
            c.rect((x0 + (0.2 + 0.2 * k) * w, yy - 0.08 * h, x0 + (0.4 + 0.2 * k) * w, yy), colour)
        c.rect((x1 - 0.02 * w, y0, x1 + 0.12 * w, y1), "fridge")   # the door, swung towards us
    else:
        c.rect((x0 + 0.75 * w, y0 + 0.3 * h, x0 + 0.85 * w, y0 + 0.6 * h), "handle")


def _tap(c: _Canvas, box, running: bool) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    c.rect((x0 - 0.1 * w, y0 + 0.72 * h, x1 + 0.1 * w, y1 + 0.12 * h), "sink")
    c.rect((x0 + 0.42 * w, y0, x0 + 0.58 * w, y0 + 0.45 * h), "steel")
    c.rect((x0 + 0.2 * w, y0, x0 + 0.58 * w, y0 + 0.12 * h), "steel")
    if running:
        c.rect((x0 + 0.2 * w, y0 + 0.12 * h, x0 + 0.45 * w, y1 + 0.08 * h), "water")


def _wet(c: _Canvas, box) -> None:
    """Water poured over an object: a stream from above and the object under blue water and foam."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    c.rect((x0 + 0.35 * w, max(WALL_END - 0.1, y0 - 0.25), x0 + 0.65 * w, y0 + 0.2 * h), "water")
    c.ellipse((x0 - 0.05 * w, y0 + 0.1 * h, x1 + 0.05 * w, y1 + 0.05 * h), "water")
    for fx, fy in ((0.25, 0.45), (0.6, 0.35), (0.45, 0.7), (0.75, 0.65)):
        c.ellipse((x0 + (fx - 0.1) * w, y0 + (fy - 0.12) * h, x0 + (fx + 0.1) * w, y0 + (fy + 0.12) * h), "foam")


def _hand(c: _Canvas, centre, side: str) -> None:
    """A palm with its forearm reaching to the bottom edge (the egocentric look)."""
    cx, cy = centre
    pw, ph = PALM
    arm_x = cx + (-0.03 if side == "left" else 0.03)
    c.rect((arm_x - 0.3 * pw, cy, arm_x + 0.3 * pw, 1.0), "sleeve")
    c.ellipse((cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2), "skin")


def _knife(c: _Canvas, centre, side: str) -> None:
    cx, cy = centre
    sgn = 1 if side == "left" else -1
    c.rect((cx + sgn * 0.02 - 0.012, cy - 0.12, cx + sgn * 0.02 + 0.012, cy - 0.02), "blade")


def hand_target(o: Placed, verb: str) -> tuple[float, float]:
    """Where the acting palm is in the action frame."""
    x0, y0, x1, y1 = o.box
    cx = (x0 + x1) / 2
    if verb == "pick up":
        return cx, y1 - 0.18
    if OBJECTS[o.name][0] == "door":
        return (cx, (y0 + y1) / 2 + (0.08 if o.name == "drawer" else 0.0))
    if o.name == "tap":
        return cx + 0.05, y0 + 0.08
    return cx, y1 + 0.02


def render(layout: Layout, width: int, height: int, action: tuple[str, str] | None = None,
           progress: float = 1.0, move_hand: bool = True) -> np.ndarray:
    """An HxWx3 uint8 frame of `layout`: at rest (`action` None), or `action` = (verb, object) done.

    `progress` in [0, 1) moves the acting hand from rest towards the object with the scene still
    unchanged (the frames of a video between rest and the action); 1 shows the end state.
    `move_hand=False` shows the end state with both hands at rest (to measure the state change alone).
    """
    c = _Canvas(width, height, layout.tint)
    _background(c)
    verb, target = action if action else (None, None)
    done = action is not None and progress >= 1.0
    lifted = None
    for o in layout.objects:
        acted = done and o.name == target
        kind = OBJECTS[o.name][0]
        if kind == "food":
            if acted and verb == "pick up":
                lifted = o
            else:
                _food(c, o, o.box, cut=acted and verb == "cut")
        elif kind == "dish":
            if acted and verb == "pick up":
                lifted = o
            else:
                _dish(c, o, o.box)
        elif kind == "door":
            _door(c, o, o.box, o.is_open != (acted and verb in ("open", "close")))
        else:
            _tap(c, o.box, running=acted and verb == "turn on")
        if acted and verb == "wash":
            _wet(c, o.box)
    hands = {"left": layout.rest[0], "right": layout.rest[1]}
    if action is not None and move_hand:
        o = layout.find(target)
        goal = hand_target(o, verb)
        s = min(max(progress, 0.0), 1.0)
        start = hands[o.hand]
        hands[o.hand] = (start[0] + s * (goal[0] - start[0]), start[1] + s * (goal[1] - start[1]))
    for side, centre in hands.items():
        _hand(c, centre, side)
    if done and lifted is not None:
        x0, y0, x1, y1 = lifted.box
        up = (x0, y0 - 0.2, x1, y1 - 0.2)
        (_dish if OBJECTS[lifted.name][0] == "dish" else lambda cc, oo, bb: _food(cc, oo, bb, cut=False))(c, lifted, up)
    if done and verb == "cut" and move_hand:
        _knife(c, hands[layout.find(target).hand], layout.find(target).hand)
    return np.asarray(c.img)


def boxes_at_rest(layout: Layout, target: str) -> list[dict]:
    """The input frame's boxes in the schema's form: both hands and the object of the action."""
    out = []
    for side, (cx, cy) in zip(("left", "right"), layout.rest):
        out.append({"kind": f"{side}_hand", "box": _clip((cx - PALM[0] / 2, cy - PALM[1] / 2,
                                                          cx + PALM[0] / 2, cy + PALM[1] / 2))})
    o = layout.find(target)
    out.append({"kind": "object_of_change", "name": o.name, "box": _clip(o.box)})
    return out


def _clip(box) -> list[float]:
    return [round(min(max(v, 0.0), 1.0), 4) for v in box]
