"""``--backend template``: a plain description from the label and boxes, without any LLM.

A fallback for the bundled demo and for users without an API, NOT the paper's method: it only
restates what the label and the boxes say — the verb, the object, where the object is (left,
centre or right of the view), which hand acts (the one nearer the object) and the end state the
verb implies. Deterministic, one sentence pattern, so a small model can learn it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# the end state a verb leaves (verbs not listed: "the {noun} has changed as the action implies")
END_STATES = {
    "cut": "the {noun} is in pieces", "chop": "the {noun} is in pieces", "slice": "the {noun} is in slices",
    "open": "the {noun} is open", "close": "the {noun} is closed",
    "pick up": "the {noun} is lifted in the hand", "take": "the {noun} is in the hand",
    "lift": "the {noun} is lifted in the hand", "put down": "the {noun} rests on the counter",
    "wash": "water runs over the {noun}", "rinse": "water runs over the {noun}",
    "turn on": "water runs from the {noun}", "turn off": "the {noun} is off", "stir": "the {noun} is stirred",
}
_ES = ("s", "sh", "ch", "x", "z", "o")


def third_person(verb: str) -> str:
    """'cut' → 'cuts', 'pick up' → 'picks up', 'wash' → 'washes', 'carry' → 'carries'."""
    head, _, rest = verb.strip().partition(" ")
    if head.endswith(_ES):
        head += "es"
    elif len(head) > 1 and head.endswith("y") and head[-2] not in "aeiou":
        head = head[:-1] + "ies"
    else:
        head += "s"
    return f"{head} {rest}".strip()


def horizontal(box: Sequence[float]) -> str:
    """'left', 'centre' or 'right': which third of the view a box's centre is in."""
    cx = (box[0] + box[2]) / 2
    return "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"


def where(box: Sequence[float]) -> str:
    """'bottom left', 'centre', 'top right'... from a box's centre (thirds of the frame)."""
    cy = (box[1] + box[3]) / 2
    h = horizontal(box)
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    if v == "middle":
        return "centre" if h == "centre" else f"{h} side"
    return f"{v} {h}" if h != "centre" else f"{v} centre"


def split_label(label: str, noun: str = "") -> tuple[str, str]:
    """(verb, noun) of a verb + noun label: the verb is what comes before `noun` when the label
    names it ("put plate on counter" → ("put", "plate")), else all but the last word
    ("pick up cup" → ("pick up", "cup"))."""
    label = " ".join(label.split())
    at = f" {label} ".find(f" {noun} ") if noun else -1
    if at > 0:
        return label[: at - 1], noun
    verb, _, last = label.rpartition(" ")
    return (verb, last) if verb else (label, noun)


def _acting_hand(hands: Sequence[Mapping[str, Any]], target: Mapping[str, Any] | None) -> str | None:
    """The hand nearer the object (horizontally): with both hands at rest, the one on its side."""
    if not hands:
        return None
    if target is None or len(hands) == 1:
        return str(hands[0]["kind"]).replace("_", " ")
    tx = (target["box"][0] + target["box"][2]) / 2
    best = min(hands, key=lambda b: abs((b["box"][0] + b["box"][2]) / 2 - tx))
    return str(best["kind"]).replace("_", " ")


def describe(label: str, noun: str = "", boxes: Sequence[Mapping[str, Any]] = ()) -> str:
    """E.g. 'The left hand cuts the onion on the left of the counter. In the end the onion is in
    pieces.' Without boxes: 'The person cuts the onion. In the end the onion is in pieces.'"""
    verb, thing = split_label(label, noun)
    hands = [b for b in boxes if b.get("kind") in ("left_hand", "right_hand", "hand")]
    objects = [b for b in boxes if b.get("kind") in ("object_of_change", "object")]
    target = objects[0] if objects else None
    thing = str(target.get("name") or thing) if target else thing
    hand = _acting_hand(hands, target)
    who = f"The {hand}" if hand else "The person"
    s = f"{who} {third_person(verb)} the {thing}" if thing else f"{who} {third_person(verb)}"
    if target is not None:
        side = horizontal(target["box"])
        s += " in the centre of the counter" if side == "centre" else f" on the {side} of the counter"
    end = END_STATES.get(verb, "the {noun} has changed as the action implies").format(noun=thing or "object")
    return f"{s}. In the end {end}."
