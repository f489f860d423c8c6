"""The in-context prompt: a system instruction, K hand-written examples, then the query.

Each example and the query have the same form: the short action label, then (when the sample has
any) one line per hand/object box in relative [0, 1] coordinates with its kind and name. The
examples are a user/assistant exchange each, so any chat model follows the pattern. A sample
without boxes gets the same prompt minus every box line (the examples' included), so the model is
never shown a form it is not asked to answer.

``--examples FILE`` replaces ours. The file is JSON, either a list of examples or an object
``{"system": "...optional instruction...", "examples": [...]}``; each example is::

    {"label": "cut onion",
     "boxes": [{"kind": "left_hand", "box": [0.20, 0.55, 0.38, 0.85]},
               {"kind": "object_of_change", "name": "onion", "box": [0.35, 0.50, 0.55, 0.70]}],
     "description": "The person holds the onion ... "}

``boxes`` is optional; ``kind`` is one of the schema's box kinds (left_hand, right_hand, hand,
object, object_of_change, tool), ``box`` is [x0, y0, x1, y1] in [0, 1] from the top-left corner.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lego_core.data.schema import BOX_KINDS
from lego_core.errors import BadInput

SYSTEM = (
    "You write detailed descriptions of actions seen by a head-mounted (egocentric) camera. "
    "You are given a short action label{boxes}. Describe in one paragraph of 2 to 4 sentences, "
    "present tense, how the action is done at the moment it happens: which hand does what and how it "
    "moves, which object is acted on, which tool is used, where things are in the view, and how the "
    "object's state changes. Describe only what the action implies; do not invent people, brands or "
    "unrelated objects, do not mention the camera, the boxes or coordinates, and do not add any "
    "preamble. Answer with the description only."
)
_SYSTEM_BOXES = (
    " and the positions of the hands and objects in the frame, as boxes [x0, y0, x1, y1] in relative "
    "coordinates (fractions of the frame width and height, measured from the top-left corner); use "
    "them to say where things are (left, right, centre, top, bottom, near or far)"
)

_KIND_NAMES = {
    "left_hand": "left hand",
    "right_hand": "right hand",
    "hand": "hand",
    "object": "object",
    "object_of_change": "object being changed",
    "tool": "tool",
}


@dataclass(frozen=True)
class Example:
    """One in-context example: the label, its boxes (schema form) and the description we expect."""

    label: str
    description: str
    boxes: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)


def _b(kind: str, x0: float, y0: float, x1: float, y1: float, name: str | None = None) -> dict:
    d: dict[str, Any] = {"kind": kind, "box": [x0, y0, x1, y1]}
    if name:
        d["name"] = name
    return d


# Our own hand-written examples, across scenes: kitchen, workshop, garden, cleaning, laundry, DIY.
EXAMPLES: tuple[Example, ...] = (
    Example(
        "cut onion",
        "The person holds the peeled onion flat on the wooden cutting board in the lower centre with the "
        "fingertips of the left hand curled back, while the right hand presses the kitchen knife down "
        "through it in a slow rocking motion. Each stroke slices a thin half-ring off the onion, which "
        "falls to the right of the blade and builds a small pile of pieces on the board.",
        (_b("left_hand", 0.22, 0.55, 0.40, 0.85), _b("right_hand", 0.55, 0.48, 0.75, 0.80),
         _b("object_of_change", 0.36, 0.58, 0.52, 0.74, "onion"), _b("tool", 0.45, 0.50, 0.70, 0.72, "knife")),
    ),
    Example(
        "open fridge",
        "The person grips the vertical handle on the right side of the fridge door with the right hand and "
        "pulls it back toward the body in a wide arc. The door swings open to the right, the light inside "
        "turns on and the shelves with food and bottles become visible, while the left hand stays "
        "relaxed at the side of the view.",
        (_b("right_hand", 0.66, 0.35, 0.82, 0.62), _b("object_of_change", 0.45, 0.05, 1.00, 0.95, "fridge door")),
    ),
    Example(
        "tighten screw",
        "The person steadies the pine board on the workbench with the left hand spread flat on its left "
        "end, and with the right hand turns the screwdriver clockwise, its tip seated in the head of the "
        "screw near the centre of the board. The wrist rotates in short twists until the screw head sinks "
        "flush with the wood and the hinge beneath it is held tight.",
        (_b("left_hand", 0.08, 0.50, 0.30, 0.80), _b("right_hand", 0.48, 0.30, 0.66, 0.60),
         _b("tool", 0.50, 0.40, 0.58, 0.66, "screwdriver"), _b("object_of_change", 0.50, 0.62, 0.56, 0.68, "screw")),
    ),
    Example(
        "dig soil",
        "Kneeling over the vegetable bed, the person pushes the hand trowel into the dark soil in the lower "
        "middle of the view with the right hand, tilts the blade and lifts a scoop of earth out, dropping "
        "it to the left of the hole. The left hand rests on the ground beside the bed for balance, and the "
        "hole grows deeper and wider with each scoop.",
        (_b("right_hand", 0.50, 0.45, 0.68, 0.72), _b("tool", 0.52, 0.60, 0.62, 0.85, "trowel"),
         _b("left_hand", 0.10, 0.70, 0.28, 0.95), _b("object_of_change", 0.35, 0.70, 0.75, 1.00, "soil")),
    ),
    Example(
        "wipe table",
        "The person presses a damp blue cloth flat against the table top with the right hand and sweeps it "
        "from the right side of the table toward the centre in overlapping strokes, gathering crumbs in "
        "front of it. The left hand holds the edge of the table at the bottom left, and the wiped surface "
        "is left clean and slightly wet.",
        (_b("right_hand", 0.55, 0.55, 0.78, 0.85), _b("tool", 0.52, 0.65, 0.80, 0.88, "cloth"),
         _b("left_hand", 0.05, 0.80, 0.22, 1.00), _b("object_of_change", 0.00, 0.45, 1.00, 1.00, "table")),
    ),
    Example(
        "fold shirt",
        "The person lifts the bottom hem of the t-shirt lying flat on the bed with both hands, one at each "
        "corner, and brings it up to meet the collar at the top of the view. The hands then smooth the "
        "fabric down along the new fold, leaving the shirt folded in half into a neat rectangle.",
        (_b("left_hand", 0.18, 0.60, 0.36, 0.85), _b("right_hand", 0.62, 0.60, 0.80, 0.85),
         _b("object_of_change", 0.15, 0.20, 0.85, 0.90, "t-shirt")),
    ),
    Example(
        "pour water",
        "The person tilts the kettle held by its handle in the right hand so that water streams from the "
        "spout into the white mug standing on the counter at the centre of the view. The left hand holds "
        "the mug steady by its side, and the water level in the mug rises toward the rim until the kettle "
        "is tilted back upright.",
        (_b("right_hand", 0.60, 0.15, 0.80, 0.45), _b("tool", 0.50, 0.10, 0.85, 0.50, "kettle"),
         _b("left_hand", 0.20, 0.50, 0.38, 0.75), _b("object_of_change", 0.38, 0.48, 0.55, 0.72, "mug")),
    ),
    Example(
        "sand plank",
        "The person holds the plank steady against the workbench with the left hand at the far end, and the "
        "right hand pushes a folded sheet of sandpaper back and forth along the grain across the middle of "
        "the board. Fine dust gathers in front of the paper, and the rough grey surface of the wood turns "
        "smooth and pale where it has been sanded.",
        (_b("left_hand", 0.10, 0.25, 0.28, 0.50), _b("right_hand", 0.45, 0.50, 0.65, 0.80),
         _b("tool", 0.46, 0.58, 0.62, 0.72, "sandpaper"), _b("object_of_change", 0.05, 0.30, 0.95, 0.75, "plank")),
    ),
)


@dataclass(frozen=True)
class PromptSet:
    """The system instruction (with ``{boxes}`` where the box paragraph goes) and the examples."""

    system: str = SYSTEM
    examples: tuple[Example, ...] = EXAMPLES
    source: str = "built-in"


def default_prompts() -> PromptSet:
    return PromptSet()


# --- rendering ------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


def box_line(box: Mapping[str, Any]) -> str:
    """``- right hand: [0.55, 0.48, 0.75, 0.80]`` / ``- tool "knife": [...]``."""
    kind = _KIND_NAMES.get(str(box.get("kind")), str(box.get("kind")).replace("_", " "))
    name = box.get("name")
    label = f'{kind} "{name}"' if name else kind
    return f"- {label}: [{', '.join(_fmt(v) for v in box['box'])}]"


def render_query(label: str, boxes: Sequence[Mapping[str, Any]] = (), *, with_boxes: bool = True) -> str:
    """One example's or the query's user message."""
    lines = [f"Action: {label.strip()}"]
    if with_boxes and boxes:
        lines.append("Boxes:")
        lines.extend(box_line(b) for b in boxes)
    return "\n".join(lines)


def render_system(system: str, with_boxes: bool) -> str:
    if "{boxes}" in system:
        return system.replace("{boxes}", _SYSTEM_BOXES if with_boxes else "")
    return system


def build_messages(label: str, boxes: Sequence[Mapping[str, Any]] = (), prompts: PromptSet | None = None) -> list[dict]:
    """The chat messages for one sample: system, the examples as user/assistant turns, the query."""
    prompts = prompts or PromptSet()
    with_boxes = bool(boxes)
    messages = [{"role": "system", "content": render_system(prompts.system, with_boxes)}]
    for ex in prompts.examples:
        messages.append({"role": "user", "content": render_query(ex.label, ex.boxes, with_boxes=with_boxes)})
        messages.append({"role": "assistant", "content": ex.description})
    messages.append({"role": "user", "content": render_query(label, boxes, with_boxes=with_boxes)})
    return messages


def format_messages(messages: Iterable[Mapping[str, str]]) -> str:
    """A readable transcript (for ``--dry-run``)."""
    return "\n".join(f"[{m['role']}]\n{m['content']}\n" for m in messages)


# --- --examples FILE ------------------------------------------------------------------------


def _box_problem(b: Any) -> str | None:
    if not isinstance(b, dict):
        return "a box is not an object"
    if b.get("kind") not in BOX_KINDS:
        return f"a box kind is {b.get('kind')!r}; want one of {', '.join(BOX_KINDS)}"
    if b.get("name") is not None and not isinstance(b["name"], str):
        return "a box name is not a string"
    v = b.get("box")
    ok = isinstance(v, list) and len(v) == 4 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if not ok:
        return "a box is not [x0, y0, x1, y1] numbers"
    if not all(0.0 <= x <= 1.0 for x in v) or v[0] > v[2] or v[1] > v[3]:
        return "a box is not within [0, 1] with x0 <= x1 and y0 <= y1"
    return None


def load_examples(path: str | Path) -> PromptSet:
    """Read a user's ``--examples`` JSON file (format: module docstring); `BadInput` on any problem."""
    path = Path(path)
    where = f"--examples {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{where}: cannot read it ({e})") from None
    except ValueError as e:
        raise BadInput(f"{where}: not valid JSON ({e})") from None
    system = SYSTEM
    if isinstance(data, dict):
        if "examples" not in data:
            raise BadInput(f'{where}: an object needs an "examples" list (and optionally "system")')
        if "system" in data:
            if not isinstance(data["system"], str) or not data["system"].strip():
                raise BadInput(f'{where}: "system" must be a non-empty string')
            system = data["system"]
        data = data["examples"]
    if not isinstance(data, list) or not data:
        raise BadInput(f"{where}: want a non-empty list of examples")
    examples = []
    for i, ex in enumerate(data, 1):
        if not isinstance(ex, dict):
            raise BadInput(f"{where}: example {i} is not an object")
        for k in ("label", "description"):
            if not isinstance(ex.get(k), str) or not ex[k].strip():
                raise BadInput(f"{where}: example {i}: {k!r} is missing or empty")
        boxes = ex.get("boxes", [])
        if not isinstance(boxes, list):
            raise BadInput(f"{where}: example {i}: 'boxes' is not a list")
        for b in boxes:
            p = _box_problem(b)
            if p:
                raise BadInput(f"{where}: example {i}: {p}")
        unknown = set(ex) - {"label", "description", "boxes"}
        if unknown:
            raise BadInput(f"{where}: example {i}: unknown field(s) {', '.join(sorted(unknown))}")
        examples.append(Example(ex["label"].strip(), ex["description"].strip(), tuple(boxes)))
    return PromptSet(system=system, examples=tuple(examples), source=str(path))


def examples_as_json(prompts: PromptSet | None = None) -> str:
    """The prompt set in the ``--examples`` file format (a starting point for your own)."""
    prompts = prompts or PromptSet()
    return json.dumps({"system": prompts.system, "examples": [
        {"label": e.label, "boxes": [dict(b) for b in e.boxes], "description": e.description}
        for e in prompts.examples]}, indent=2, ensure_ascii=False)
