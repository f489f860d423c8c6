"""Synthetic egocentric-like videos whose frames carry their own index, and the bundled sample.

Why: frame extraction must grab *exactly* the frame an annotation points at (EPIC: start − 0.25 s
and start + 0.6·(stop − start); Ego4D: the pre_15 and pnr critical frames), through B-frames,
GOP seeking and NTSC rates. Real videos cannot tell us which frame we got; these can. Every frame
draws a kitchen-like scene (a fixed background per seed, two moving skin-coloured hands) and, in a
band along the top, its index as 2×14 large black/white cells: a start mark, 20 index bits, a
CRC-4 and an end mark. The cells are big enough (1/14 of the width, 6 % of the height) to survive
H.264, a squash to 256×256 and JPEG, and `read_frame_index` only reads their centres.

The sample (`make_sample`) mimics the real layouts and annotation formats of EPIC-KITCHENS-100
(CSV, 59.94 fps videos, frame numbers at 60 fps) and Ego4D FHO (`fho_main.json`, 30 fps), with
made-up ids that cannot collide with real ones. numpy, PIL and PyAV only: no torch.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------
# The index code
# ---------------------------------------------------------------------------------------------

CODE_ROWS, CODE_COLS = 2, 14
CODE_BAND = 0.12  # fraction of the height taken by the code band (two rows of cells)
INDEX_BITS = 20  # up to 1,048,575: 4.8 h at 59.94 fps
MAX_INDEX = (1 << INDEX_BITS) - 1
_START, _END = (1, 0), (0, 1)


def _crc4(value: int, nbits: int = INDEX_BITS) -> int:
    """CRC-4 (x^4 + x + 1) of `value`: catches every single-bit and 4-bit burst error, so a
    misread cell raises instead of yielding a wrong index."""
    reg = 0
    for k in range(nbits - 1, -1, -1):
        bit = (value >> k) & 1
        top = (reg >> 3) & 1
        reg = (reg << 1) & 0xF
        if bit ^ top:
            reg ^= 0b0011
    return reg


def _bits(value: int, n: int) -> list[int]:
    return [(value >> k) & 1 for k in range(n - 1, -1, -1)]


def encode_index(index: int) -> list[int]:
    """The 28 cell values (1 = white) for `index`, row-major over the 2×14 grid."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"frame index {index} outside 0..{MAX_INDEX}")
    return [*_START, *_bits(index, INDEX_BITS), *_bits(_crc4(index), 4), *_END]


def _cell_edges(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.round(np.linspace(0, width, CODE_COLS + 1)).astype(int)
    ys = np.round(np.linspace(0, CODE_BAND * height, CODE_ROWS + 1)).astype(int)
    return xs, ys


def read_frame_index(image) -> int:
    """Decode the index drawn by `render_frame` from a PIL image or an HxWx3 uint8 array.

    Works at any size as long as the whole frame was resized (no crop): cells are found by
    their relative position, and only the inner half of each cell is averaged so blur, ringing
    and chroma subsampling at the edges do not matter. Raises ValueError when a cell is neither
    clearly dark nor clearly light, or the marks / CRC do not match (e.g. a noise image).
    """
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] < 8 or arr.shape[1] < 2 * CODE_COLS:
        raise ValueError(f"image of shape {arr.shape} is too small to hold a frame index")
    h, w = arr.shape[:2]
    xs, ys = _cell_edges(w, h)
    band = arr[: ys[-1] + 1].astype(np.float32).mean(axis=2)
    cells = []
    for r in range(CODE_ROWS):
        cy0, cy1 = ys[r], ys[r + 1]
        y0, y1 = cy0 + (cy1 - cy0) // 4, max(cy0 + 3 * (cy1 - cy0) // 4, cy0 + (cy1 - cy0) // 4 + 1)
        for c in range(CODE_COLS):
            cx0, cx1 = xs[c], xs[c + 1]
            x0, x1 = cx0 + (cx1 - cx0) // 4, max(cx0 + 3 * (cx1 - cx0) // 4, cx0 + (cx1 - cx0) // 4 + 1)
            m = float(band[y0:y1, x0:x1].mean())
            if m < 80:
                cells.append(0)
            elif m > 175:
                cells.append(1)
            else:
                raise ValueError(f"frame index unreadable: code cell {r},{c} has mean {m:.0f}")
    if tuple(cells[:2]) != _START or tuple(cells[-2:]) != _END:
        raise ValueError("frame index unreadable: start/end marks missing")
    index = int("".join(map(str, cells[2 : 2 + INDEX_BITS])), 2)
    crc = int("".join(map(str, cells[2 + INDEX_BITS : -2])), 2)
    if crc != _crc4(index):
        raise ValueError(f"frame index unreadable: CRC mismatch for {index}")
    return index


# ---------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------

# Object colours (RGB); positions come from `scene_objects`.
_COLOURS = {
    "wall": (196, 204, 210),
    "counter": (178, 138, 96),
    "board": (222, 190, 140),
    "onion": (150, 70, 95),
    "knife": (190, 195, 200),
    "knife_handle": (30, 30, 30),
    "plate": (245, 245, 240),
    "plate_rim": (170, 170, 175),
    "cup": (200, 40, 45),
    "tap": (120, 125, 135),
    "sink": (150, 160, 170),
    "fridge": (235, 238, 240),
    "fridge_handle": (90, 90, 95),
}
SKIN = (224, 172, 140)
HAND_SIZE = (0.085, 0.15)  # palm ellipse (width, height) as fractions of the frame


def scene_objects(seed: int = 0) -> dict[str, tuple[float, float, float, float]]:
    """Relative boxes (x0, y0, x1, y1 in [0, 1]) of the objects drawn for `seed`.

    Annotation makers use these to put hands near the object of an action and to write
    object boxes; `object_box` converts them to pixels.
    """
    rng = np.random.default_rng([seed, 1])
    j = lambda s=0.03: float(rng.uniform(-s, s))  # noqa: E731 - small seeded jitter
    bx, by = 0.14 + j(), 0.62 + j()
    ox, oy = bx + 0.06 + j(0.01), by + 0.05 + j(0.01)
    px, py = 0.42 + j(), 0.70 + j()
    cx, cy = 0.66 + j(), 0.50 + j()
    kx, ky = bx + 0.02 + j(0.01), by + 0.21 + j(0.01)
    tx = 0.40 + j()
    return {
        "board": (bx, by, bx + 0.22, by + 0.18),
        "onion": (ox, oy, ox + 0.07, oy + 0.10),
        "knife": (kx, ky, kx + 0.20, ky + 0.03),
        "plate": (px, py, px + 0.16, py + 0.16),
        "cup": (cx, cy, cx + 0.05, cy + 0.11),
        "sink": (tx - 0.06, 0.40, tx + 0.12, 0.52),
        "tap": (tx, 0.20, tx + 0.05, 0.40),
        "fridge": (0.84, CODE_BAND, 1.0, 0.80),
    }


def object_box(name: str, width: int, height: int, seed: int = 0) -> dict[str, int]:
    """Pixel box {x, y, width, height} of a scene object (Ego4D's bbox convention)."""
    x0, y0, x1, y1 = scene_objects(seed)[name]
    return _pixel_box(x0, y0, x1, y1, width, height)


def _pixel_box(x0, y0, x1, y1, width, height) -> dict[str, int]:
    X0, Y0 = max(0, round(x0 * width)), max(0, round(y0 * height))
    X1, Y1 = min(width, round(x1 * width)), min(height, round(y1 * height))
    return {"x": X0, "y": Y0, "width": X1 - X0, "height": Y1 - Y0}


@functools.lru_cache(maxsize=8)
def _background(width: int, height: int, seed: int) -> np.ndarray:
    """The static scene for (size, seed), drawn once: wall, counter with a soft seeded texture,
    and the objects. Cached and read-only, so a frame costs a copy plus the hands and the code."""
    rng = np.random.default_rng([seed, 0])
    wall_end = 0.40
    img = Image.new("RGB", (width, height), _COLOURS["counter"])
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, width, round(wall_end * height)], fill=_COLOURS["wall"])
    # tile lines on the wall
    for k in range(1, 12):
        x = round(k * width / 12)
        d.line([x, 0, x, round(wall_end * height)], fill=(176, 184, 190), width=max(1, width // 640))
    px = lambda b: [round(b[0] * width), round(b[1] * height), round(b[2] * width), round(b[3] * height)]  # noqa: E731
    o = scene_objects(seed)
    d.rectangle(px(o["fridge"]), fill=_COLOURS["fridge"], outline=(160, 160, 165), width=max(1, width // 320))
    fx0, fy0, fx1, fy1 = o["fridge"]
    d.rectangle(px((fx0 + 0.02, fy0 + 0.15, fx0 + 0.03, fy0 + 0.40)), fill=_COLOURS["fridge_handle"])
    d.rectangle(px(o["sink"]), fill=_COLOURS["sink"])
    tx0, ty0, tx1, ty1 = o["tap"]
    d.rectangle(px((tx0 + 0.015, ty0, tx1 - 0.015, ty1)), fill=_COLOURS["tap"])
    d.rectangle(px((tx0, ty0 + 0.02, tx1, ty0 + 0.06)), fill=_COLOURS["tap"])
    d.rectangle(px(o["board"]), fill=_COLOURS["board"])
    d.ellipse(px(o["onion"]), fill=_COLOURS["onion"])
    kx0, ky0, kx1, ky1 = o["knife"]
    d.rectangle(px((kx0, ky0, kx0 + 0.07, ky1)), fill=_COLOURS["knife_handle"])
    d.polygon([(round((kx0 + 0.07) * width), round(ky0 * height)), (round(kx1 * width), round(ky0 * height)),
               (round((kx0 + 0.07) * width), round(ky1 * height))], fill=_COLOURS["knife"])
    d.ellipse(px(o["plate"]), fill=_COLOURS["plate_rim"])
    p0, q0, p1, q1 = o["plate"]
    d.ellipse(px((p0 + 0.015, q0 + 0.025, p1 - 0.015, q1 - 0.025)), fill=_COLOURS["plate"])
    d.ellipse(px(o["cup"]), fill=_COLOURS["cup"])
    arr = np.asarray(img, dtype=np.float32)
    # low-frequency seeded shading, so the scene is not flat colour (closer to real footage)
    small = rng.uniform(0.85, 1.1, size=(9, 16)).astype(np.float32)
    shade = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR))
    arr = np.clip(arr * shade[..., None], 0, 255).astype(np.uint8)
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=8)
def _palm_mask(width: int, height: int) -> np.ndarray:
    pw, ph = max(2, round(HAND_SIZE[0] * width)), max(2, round(HAND_SIZE[1] * height))
    yy, xx = np.mgrid[0:ph, 0:pw]
    return ((xx + 0.5 - pw / 2) / (pw / 2)) ** 2 + ((yy + 0.5 - ph / 2) / (ph / 2)) ** 2 <= 1.0


def idle_hands(index: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Default (left, right) palm centres, relative: smooth Lissajous paths, never still."""
    t = 2 * math.pi * index
    left = (0.25 + 0.08 * math.sin(t / 347), 0.80 + 0.06 * math.sin(t / 233 + 1.0))
    right = (0.62 + 0.12 * math.sin(t / 311 + 0.5), 0.72 + 0.08 * math.sin(t / 197))
    return left, right


def hand_box(centre: tuple[float, float], width: int, height: int) -> dict[str, int]:
    """Pixel box {x, y, width, height} of the palm drawn at relative `centre`."""
    cx, cy = _clamp_hand(centre)
    return _pixel_box(cx - HAND_SIZE[0] / 2, cy - HAND_SIZE[1] / 2,
                      cx + HAND_SIZE[0] / 2, cy + HAND_SIZE[1] / 2, width, height)


def _clamp_hand(c):
    # keep palms inside the frame and below the code band
    return (min(max(c[0], HAND_SIZE[0] / 2), 1 - HAND_SIZE[0] / 2),
            min(max(c[1], CODE_BAND + HAND_SIZE[1] / 2 + 0.01), 1 - HAND_SIZE[1] / 2))


def render_frame(index: int, width: int, height: int, *, seed: int = 0,
                 hands: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """One HxWx3 uint8 frame: the seed's background, two hands (palm + forearm to the bottom
    edge, the egocentric look) at `hands` (relative centres; default `idle_hands(index)`), and
    `index` encoded in the top band. A few ms at 1920×1080."""
    cells = encode_index(index)
    frame = _background(width, height, seed).copy()
    mask = _palm_mask(width, height)
    ph, pw = mask.shape
    skin = np.array(SKIN, np.uint8)
    for centre in hands if hands is not None else idle_hands(index):
        cx, cy = _clamp_hand(centre)
        # clamp in pixels too: a negative start would wrap around in numpy slicing
        x0 = min(max(0, round(cx * width - pw / 2)), width - pw)
        y0 = min(max(0, round(cy * height - ph / 2)), height - ph)
        arm = max(1, round(0.6 * pw))
        ax0 = x0 + (pw - arm) // 2
        frame[y0 + ph // 2 :, max(0, ax0) : ax0 + arm] = (0.9 * skin).astype(np.uint8)
        sub = frame[y0 : y0 + ph, x0 : x0 + pw]
        sub[mask[: sub.shape[0], : sub.shape[1]]] = skin
    xs, ys = _cell_edges(width, height)
    for k, v in enumerate(cells):
        r, c = divmod(k, CODE_COLS)
        frame[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = 255 * v
    return frame


class ActionHands:
    """Hand track that brings the right hand onto each action's object.

    `events` are (start_s, stop_s, object name). The hand leaves its idle path 0.5 s before the
    start, reaches the object at 30 % of the action (so EPIC's input frame at start − 0.25 s shows
    it on the way and the target frame at 60 % shows it on the object), stays until the stop and
    returns over 0.5 s. Called with a frame index, it returns (left, right) relative centres.
    """

    def __init__(self, events: Iterable[tuple[float, float, str]], fps, seed: int = 0):
        objs = scene_objects(seed)
        self.fps = float(fps)
        self.events = []
        for t0, t1, name in events:
            x0, y0, x1, y1 = objs[name]
            self.events.append((t0, t1, ((x0 + x1) / 2, (y0 + y1) / 2 - 0.02)))

    def __call__(self, index: int):
        t = index / self.fps
        left, right = idle_hands(index)
        best, target = 0.0, None
        for t0, t1, tgt in self.events:
            reach = t0 + 0.3 * (t1 - t0)
            if t0 - 0.5 < t < t1 + 0.5:
                w = (t - (t0 - 0.5)) / (reach - t0 + 0.5) if t < reach else (1.0 if t <= t1 else 1 - (t - t1) / 0.5)
                w = min(max(w, 0.0), 1.0)
                if w > best:
                    best, target = w, tgt
        if target is not None:
            s = best * best * (3 - 2 * best)  # smoothstep
            wobble = 0.004 * math.sin(index / 3.0)  # hands on an object still move a little
            right = (right[0] + s * (target[0] - right[0]) + wobble, right[1] + s * (target[1] - right[1]))
        return left, right


# ---------------------------------------------------------------------------------------------
# Video writing
# ---------------------------------------------------------------------------------------------

def _as_fraction(fps) -> Fraction:
    if isinstance(fps, float):
        return Fraction(fps).limit_denominator(1001)
    return Fraction(fps)


def write_indexed_video(path, n_frames: int, *, fps=Fraction(60000, 1001), width: int = 640,
                        height: int = 360, gop_seconds: float = 1.0, bframes: int = 3, crf: int = 20,
                        preset: str = "veryfast", seed: int = 0,
                        hands: Callable[[int], Sequence[tuple[float, float]]] | None = None,
                        threads: int = 0, timestamps: Callable[[int], int] | None = None) -> dict:
    """Write `n_frames` of `render_frame` (index band, seeded scene, `hands(i)` palm centres or the
    idle paths) as H.264; see `write_video`. Returns the video's facts."""
    info = write_video(path, n_frames, lambda i: render_frame(i, width, height, seed=seed,
                                                            hands=hands(i) if hands else None),
                       fps=fps, width=width, height=height, gop_seconds=gop_seconds, bframes=bframes, crf=crf,
                       preset=preset, threads=threads, timestamps=timestamps)
    return {**info, "seed": seed}


def write_video(path, n_frames: int, frame: Callable[[int], np.ndarray], *, fps=Fraction(60000, 1001),
                width: int = 640, height: int = 360, gop_seconds: float = 1.0, bframes: int = 3, crf: int = 20,
                preset: str = "veryfast", threads: int = 0, timestamps: Callable[[int], int] | None = None) -> dict:
    """Write `frame(i)` (HxWx3 uint8) for i < `n_frames` as H.264 (libx264, yuv420p) with B-frames and a closed
    GOP of round(gop_seconds·fps) frames, to MP4 (or what the suffix names).

    Frame i gets pts = i in a time base of 1/fps, so it is shown at i/fps — what camera files
    look like to a decoder, and what extraction code must get right. Keyframes are forced
    regular (keyint_min = g, scenecut off) so seeking behaves the same on every GOP. Written to
    a temporary name and renamed, so a finished file is never half-written. `timestamps` maps a
    frame index to its pts in 1/fps units (default: the index); gaps make a variable-frame-rate
    video, as a phone that drops frames writes. Returns the video's facts.
    """
    import av

    path = Path(path)
    fps = _as_fraction(fps)
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    gop = max(1, round(gop_seconds * fps))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    fmt = "mp4" if path.suffix.lower() in (".mp4", ".m4v") else None
    time_base = Fraction(fps.denominator, fps.numerator)
    try:
        with av.open(str(tmp), "w", format=fmt) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
            # PyAV defaults to SLICE threads, which libx264 maps to sliced threading: ~1.6x
            # slower here than x264's own frame threads.
            stream.codec_context.thread_type = "FRAME"
            stream.codec_context.thread_count = threads
            # b_strategy 0 (x264's b-adapt=0) keeps the fixed I/P + B pattern cameras write;
            # adaptive placement puts almost no B-frames in these mostly static scenes.
            stream.options = {
                "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes),
                "b_strategy": "0", "crf": str(crf), "preset": preset,
            }
            for i in range(n_frames):
                picture = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
                picture.pts, picture.time_base = (timestamps(i) if timestamps else i), time_base
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "path": str(path), "fps": float(fps), "fps_fraction": f"{fps.numerator}/{fps.denominator}",
        "n_frames": n_frames, "width": width, "height": height, "duration": float(n_frames / fps),
        "gop": gop, "bframes": bframes,
    }


# ---------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------

EPIC_COLUMNS = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes"]
EPIC_FRAME_RATE = 60  # released RGB frames of P01–P31; the videos themselves are 59.94 fps
EPIC_FPS = Fraction(60000, 1001)
EGO4D_FPS = 30

# narration, verb, verb_class, [(noun, noun_class), ...], object the hand goes to.
# Classes checked against EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv.
EPIC_ACTIONS = [
    ("cut onion", "cut", 7, [("onion", 16)], "onion"),
    ("take knife", "take", 0, [("knife", 4)], "knife"),
    ("wash plate", "wash", 2, [("plate", 2)], "sink"),
    ("pick up cup", "pick-up", 0, [("cup", 13)], "cup"),
    ("open fridge", "open", 3, [("fridge", 12)], "fridge"),
    ("put down plate", "put-down", 1, [("plate", 2)], "plate"),
    ("turn on tap", "turn-on", 6, [("tap", 0)], "tap"),
    ("close fridge", "close", 4, [("fridge", 12)], "fridge"),
    ("put plate on counter", "put-on", 1, [("plate", 2), ("counter", 42)], "plate"),
    ("put down knife", "put-down", 1, [("knife", 4)], "knife"),
]
EPIC_HAND_TARGET = {a[0]: a[4] for a in EPIC_ACTIONS}

# narration_text, structured_verb, freeform_verb, noun (object_of_change), tool or None
EGO4D_ACTIONS = [
    ("#C C cuts the onion", "cut_(something)", "cut", "onion", "knife"),
    ("#C C picks up the cup", "take_(something)", "pick_up", "cup", None),
    ("#C C washes the plate", "wash_(something)", "wash", "plate", None),
    ("#C C takes the knife", "take_(something)", "take", "knife", None),
    ("#C C turns on the tap", "turn_on_(something)", "turn_on", "tap", None),
    ("#C C opens the fridge", "open_(something)", "open", "fridge", None),
    ("#C C puts down the plate", "put_(something)", "put_down", "plate", None),
]
CRITICAL = ["pre_45", "pre_30", "pre_15", "pre_frame", "contact_frame", "pnr_frame", "post_frame"]


def _hms(seconds: float, decimals: int) -> str:
    scale = 10**decimals
    units = round(seconds * scale)
    s, frac = divmod(units, scale)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac:0{decimals}d}"


def _slots(duration: float, n: int, lead: float, tail: float, rng) -> list[tuple[float, float]]:
    """n non-overlapping (start, stop) times in [lead, duration − tail], one per equal slot."""
    usable = duration - lead - tail
    if n <= 0 or usable <= 0:
        raise ValueError(f"cannot place {n} actions in a {duration:.2f} s video")
    slot = usable / n
    out = []
    for k in range(n):
        a = lead + k * slot
        start = a + rng.uniform(0.05, 0.25) * slot
        stop = start + min(rng.uniform(0.35, 0.6) * slot, 6.0)
        out.append((start, stop))
    return out


def make_epic_actions(video_id: str, duration: float, n: int, seed: int = 0) -> list[dict]:
    """n EPIC-KITCHENS-100 train-CSV rows (the 15 columns, as strings) spread over a video.

    Timestamps are HH:MM:SS.ss and frame numbers floor(t·60) like the released annotations,
    starts at ≥ 1 s (so start − 0.25 s is inside the video) and stops ≤ duration − 0.5 s.
    """
    rng = np.random.default_rng([seed, 2, *video_id.encode()])
    participant = video_id.split("_")[0]
    rows = []
    for k, (start, stop) in enumerate(_slots(duration, n, 1.0, 0.5, rng)):
        narration, verb, verb_class, nouns, _ = EPIC_ACTIONS[int(rng.integers(len(EPIC_ACTIONS)))]
        start_cs, stop_cs = round(start * 100), round(stop * 100)  # what the CSV can say
        rows.append({
            "narration_id": f"{video_id}_{k}",
            "participant_id": participant,
            "video_id": video_id,
            "narration_timestamp": _hms(max(0.0, start + rng.uniform(-0.3, 0.3)), 3),
            "start_timestamp": _hms(start_cs / 100, 2),
            "stop_timestamp": _hms(stop_cs / 100, 2),
            "start_frame": str(start_cs * EPIC_FRAME_RATE // 100),
            "stop_frame": str(stop_cs * EPIC_FRAME_RATE // 100),
            "narration": narration,
            "verb": verb,
            "verb_class": str(verb_class),
            "noun": nouns[0][0],
            "noun_class": str(nouns[0][1]),
            "all_nouns": repr([n_ for n_, _ in nouns]),
            "all_noun_classes": repr([c for _, c in nouns]),
        })
    return rows


def _seconds(hms: str) -> float:
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def epic_hands(rows: Sequence[dict], fps=EPIC_FPS, seed: int = 0) -> ActionHands:
    """Hand track for a video annotated by `rows` (the right hand visits each action's object)."""
    events = [(_seconds(r["start_timestamp"]), _seconds(r["stop_timestamp"]),
               EPIC_HAND_TARGET.get(r["narration"], "plate")) for r in rows]
    return ActionHands(events, fps, seed)


def _write_atomic(path: Path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)
    os.replace(tmp, path)


def write_epic_csv(path, rows: Iterable[dict]) -> Path:
    """Write rows in the EPIC-KITCHENS-100 CSV layout (header + the 15 columns, csv quoting)."""
    path = Path(path)

    def write(f):
        w = csv.DictWriter(f, fieldnames=EPIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    _write_atomic(path, write)
    return path


def write_epic_video_info(path, videos: Iterable[dict]) -> Path:
    """EPIC_100_video_info.csv: video_id,duration,fps,resolution for `write_indexed_video` infos
    (each with an added "video_id")."""
    path = Path(path)

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["video_id", "duration", "fps", "resolution"])
        for v in videos:
            w.writerow([v["video_id"], f"{v['duration']:.6f}", f"{v['fps']:.15g}", f"{v['width']}x{v['height']}"])

    _write_atomic(path, write)
    return path


def make_ego4d_video(video_uid: str, duration: float, n_actions: int, *, width: int, height: int,
                     seed: int = 0, fps: int = EGO4D_FPS) -> tuple[dict, list[tuple[float, float, str]]]:
    """One `videos[]` entry of fho_main.json and its hand events (for `ActionHands`).

    Two annotated intervals (clips) split the video; the third action has critical_frames null
    and the fifth is rejected, so loaders' skipping is exercised. Critical frames are frame
    numbers of the 30 fps video (clip_critical_frames: relative to the clip), boxes are where
    `render_frame` draws the hands and objects at those frames.
    """
    rng = np.random.default_rng([seed, 3, *video_uid.encode()])
    n_frames = round(duration * fps)
    times = _slots(duration, n_actions, 2.5, 1.0, rng)
    picks = [EGO4D_ACTIONS[int(i)] for i in rng.permutation(len(EGO4D_ACTIONS))[:n_actions]] \
        if n_actions <= len(EGO4D_ACTIONS) else [EGO4D_ACTIONS[int(rng.integers(len(EGO4D_ACTIONS)))] for _ in times]
    events = [(t0, t1, p[3]) for (t0, t1), p in zip(times, picks)]
    track = ActionHands(events, fps, seed)
    half = n_frames // 2
    clips = [(0, half), (half, n_frames)]
    intervals = [{
        "clip_id": k, "clip_uid": f"{video_uid[:8]}-clip{k}", "start_sec": a / fps, "end_sec": b / fps,
        "start_frame": a, "end_frame": b, "clip_parent_start_sec": a / fps, "redacted": False,
        "narrated_actions": [],
    } for k, (a, b) in enumerate(clips)]
    for k, ((t0, t1), (text, sverb, fverb, noun, tool)) in enumerate(zip(times, picks)):
        start_f, end_f = round(t0 * fps), round(t1 * fps)
        contact = start_f + int(rng.integers(2, 8))
        pnr = round((t0 + 0.6 * (t1 - t0)) * fps)
        pre = start_f - int(rng.integers(2, 10))
        crit = {"pre_45": pre - 45, "pre_30": pre - 30, "pre_15": pre - 15, "pre_frame": pre,
                "contact_frame": contact, "pnr_frame": max(pnr, contact + 1),
                "post_frame": min(max(pnr, contact + 1) + 10, n_frames - 1)}
        clip = 0 if start_f < half else 1
        null = k == 2
        frames = []
        if not null:
            for name in CRITICAL:
                left, right = track(crit[name])
                boxes = [
                    {"object_type": "left_hand", "instance_number": 1, "bbox": hand_box(left, width, height)},
                    {"object_type": "right_hand", "instance_number": 1, "bbox": hand_box(right, width, height)},
                    {"object_type": "object_of_change", "instance_number": 1,
                     "bbox": object_box(noun, width, height, seed), "structured_noun": noun},
                ]
                if tool:
                    boxes.append({"object_type": "tool", "instance_number": 1,
                                  "bbox": object_box(tool, width, height, seed), "structured_noun": tool})
                frames.append({"frame_type": name, "frame_number": crit[name], "boxes": boxes})
        intervals[clip]["narrated_actions"].append({
            "uid": f"{video_uid[:8]}-a{k:02d}",
            "start_sec": t0, "end_sec": t1, "start_frame": start_f, "end_frame": end_f,
            "narration_timestamp_sec": t0 + 0.1, "narration_text": text,
            "structured_verb": sverb, "freeform_verb": fverb, "state_transition": f"{noun} changes",
            "critical_frames": None if null else crit,
            "clip_critical_frames": None if null else {n: f - clips[clip][0] for n, f in crit.items()},
            "frames": frames,
            "is_valid_action": True, "is_partial": False, "is_rejected": k == 4,
            "is_invalid_annotation": False, "reject_reason": "other" if k == 4 else None,
            "stage": 4, "warnings": [],
        })
    entry = {
        "video_uid": video_uid,
        "video_metadata": {"fps": float(fps), "num_frames": n_frames, "width": width, "height": height,
                           "duration_sec": n_frames / fps},
        "annotated_intervals": intervals,
    }
    return entry, events


def make_sample(out_dir, *, seed: int = 0, epic_seconds: float = 24.0, ego4d_seconds: float = 20.0,
                width: int = 640, height: int = 360) -> dict:
    """The bundled sample: 2 EPIC-style videos (59.94 fps, 8 actions each) and 2 Ego4D-style
    videos (30 fps, 5 actions each, one without critical frames, one rejected) in the official
    folder layouts, with annotations in the real formats. Ids are made up (P01_91, P02_91: two digits, so the released frames would be 60 fps; and
    seeded UUIDs) so they never collide with real ones. Returns the paths written.
    """
    out = Path(out_dir)
    epic, ego = out / "epic-kitchens", out / "ego4d"
    rows, infos, paths = [], [], {"epic_videos": [], "ego4d_videos": []}
    for k, vid in enumerate(["P01_91", "P02_91"]):
        n = round(epic_seconds * EPIC_FPS)
        vrows = make_epic_actions(vid, float(n / EPIC_FPS), 8, seed)
        video = epic / "videos" / vid.split("_")[0] / "videos" / f"{vid}.MP4"
        info = write_indexed_video(video, n, fps=EPIC_FPS, width=width, height=height, seed=seed + k,
                                   hands=epic_hands(vrows, EPIC_FPS, seed + k))
        rows += vrows
        infos.append({**info, "video_id": vid})
        paths["epic_videos"].append(str(video))
    paths["epic_csv"] = str(write_epic_csv(epic / "EPIC_100_sample.csv", rows))
    paths["epic_video_info"] = str(write_epic_video_info(epic / "EPIC_100_video_info.csv", infos))

    rng = np.random.default_rng([seed, 4])
    entries = []
    for k in range(2):
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        entry, events = make_ego4d_video(uid, ego4d_seconds, 5, width=width, height=height, seed=seed + 10 + k)
        video = ego / "videos" / f"{uid}.mp4"
        write_indexed_video(video, entry["video_metadata"]["num_frames"], fps=EGO4D_FPS, width=width,
                            height=height, seed=seed + 10 + k, hands=ActionHands(events, EGO4D_FPS, seed + 10 + k))
        entries.append(entry)
        paths["ego4d_videos"].append(str(video))
    fho = {"version": "v2", "date": "synthetic", "description": f"lego synthetic sample (seed {seed})",
           "metadata": {}, "videos": entries}
    paths["ego4d_json"] = str(ego / "fho_main.json")
    _write_atomic(ego / "fho_main.json", lambda f: json.dump(fho, f, indent=1))
    return paths
