"""``--backend template``: a plain description from the label and boxes, without any LLM.

A fallback for the bundled demo and for users without an API, NOT the paper's method: it only
restates the label and where the hands, objects and tools are. Deterministic.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def where(box: Sequence[float]) -> str:
    """'bottom left', 'centre', 'top right'... from a box's centre (thirds of the frame)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    if v == "middle":
        return "centre" if h == "centre" else f"{h} side"
    return f"{v} {h}" if h != "centre" else f"{v} centre"


def _name(box: Mapping[str, Any], fallback: str) -> str:
    return str(box.get("name") or fallback)


def describe(label: str, noun: str = "", boxes: Sequence[Mapping[str, Any]] = ()) -> str:
    """E.g. 'The person performs the action "cut onion". The left hand is at the bottom left of the
    view and the right hand at the bottom right. They act on the onion at the bottom centre, using
    the knife at the bottom centre. By the end of the action the onion has changed accordingly.'"""
    label = " ".join(label.split())
    parts = [f'The person performs the action "{label}".']
    hands = [b for b in boxes if b.get("kind") in ("left_hand", "right_hand", "hand")]
    objects = [b for b in boxes if b.get("kind") in ("object_of_change", "object")]
    tools = [b for b in boxes if b.get("kind") == "tool"]
    if hands:
        said = [f"the {b['kind'].replace('_', ' ')} is at the {where(b['box'])}" for b in hands]
        first = said[0][0].upper() + said[0][1:]
        parts.append(first + (" of the view" if len(said) == 1 else " of the view and " + " and ".join(said[1:])) + ".")
    target = objects[0] if objects else None
    thing = _name(target, noun or "object") if target else (noun or "")
    if target or thing:
        s = f"The hands act on the {thing}"
        if target:
            s += f" at the {where(target['box'])}"
        if tools:
            s += ", using " + " and ".join(f"the {_name(t, 'tool')} at the {where(t['box'])}" for t in tools)
        parts.append(s + ".")
        parts.append(f"By the end of the action the {thing} has changed as the action implies.")
    elif tools:
        parts.append("The hands use " + " and ".join(f"the {_name(t, 'tool')} at the {where(t['box'])}" for t in tools) + ".")
    return " ".join(parts)
