"""Your own data: a manifest of your videos, or pairs of images you already have -> planned pairs.

`read_manifest` reads a CSV or JSONL file with one row per action: ``video`` (a path relative to
``--videos``), ``label``, and the two frames in ONE of three forms: ``input_frame``/``target_frame``
(frame numbers from 0, turned into the frames' own times when the video is read),
``input_time``/``target_time`` (seconds; the frame whose timestamp is nearest), or
``start_time``/``stop_time`` (the EPIC-KITCHENS rule with ``--input-offset``/``--target-fraction``).
Optional: ``id``, ``verb``, ``noun``, ``description`` (stored as curated.txt), ``boxes`` (JSON).
The rows become `Action`s that `extract` grabs from the videos exactly as it does EPIC's and Ego4D's.

`read_pairs` reads a JSONL of already-extracted pairs ``{"input": "a.jpg", "target": "b.jpg",
"label": ..., "id": ...}`` (paths relative to the file); `pairs_from_images` turns them into
samples in a worker, skipping a missing file, a non-image or two different aspect ratios.
Nothing here opens a video or an image while planning, so `--plan` stays instant.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from lego_core.data.annotations import MANIFEST, PAIRS, Action, Offsets, Reject, box_items, parse_timestamp
from lego_core.data.schema import IMAGES_SOURCE, box_problem, sanitize_key_part
from lego_core.errors import BadInput

# The three ways a row may say where X and Y are; a row uses exactly one.
FRAME_FORMS = {
    "frames": ("input_frame", "target_frame"),
    "times": ("input_time", "target_time"),
    "segment": ("start_time", "stop_time"),
}
# Aspect ratios of a pair's two images may differ this much (rounding of resized images).
ASPECT_TOLERANCE = 0.01


class RowError(ValueError):
    """Why one row cannot be a pair: a short reason (counted) and the detail (logged)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------
# Reading rows


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not a UTF-8 text file ({e}); {what}") from None


def _is_jsonl(path: Path, text: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{")


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    """(line number, row) for a CSV (a header row) or JSONL (one object a line) manifest."""
    text = _read_text(path, "a manifest is a CSV or JSONL file")
    if _is_jsonl(path, text):
        yield from _jsonl_rows(text)
        return
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in ("video", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInput(f"{path}: a manifest CSV needs the columns video, label and the two frames "
                       f"(missing: {', '.join(missing)}); see 'Your own data' in the README")
    for row in reader:
        yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict | RowError]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, RowError("not a JSON object", str(e))
            continue
        yield n, obj if isinstance(obj, dict) else RowError("not a JSON object", line[:80])


def _given(row: dict, name: str) -> bool:
    value = row.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(row: dict, name: str) -> str:
    return " ".join(str(row[name]).split()) if _given(row, name) else ""


def _frame_number(value: Any, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} is not a frame number", repr(value)) from None
    if number < 0 or number != int(number):
        raise RowError(f"{name} is not a frame number", f"{value!r}: frames are counted 0, 1, 2, ...")
    return int(number)


def _seconds(value: Any, name: str) -> float:
    """Seconds as a number, "12.5", or "HH:MM:SS.ss" like EPIC-KITCHENS' timestamps."""
    try:
        t = parse_timestamp(value) if isinstance(value, str) and ":" in value else float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} is not a time in seconds", repr(value)) from None
    if not t >= 0 or t == float("inf"):
        raise RowError(f"{name} is not a time in seconds", repr(value))
    return t


def _boxes(value: Any) -> list[dict]:
    """The `boxes` column: JSON text (CSV) or a list (JSONL), the shape `--boxes` takes."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    try:
        items = box_items(json.loads(value) if isinstance(value, str) else value)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RowError("boxes are not a list of {kind, box}", str(e)) from None
    for item in items:
        problem = box_problem(item)
        if problem:
            raise RowError("bad box", problem.replace("meta.json: ", ""))
    return items


def _derived_id(*parts: Any) -> str:
    """A sample id from what locates the pair (the frames, or the two images), so that editing
    other rows never changes it."""
    return "-".join(sanitize_key_part(p) for p in parts)


def _common(row: dict) -> dict:
    label = _text(row, "label")
    if not label:
        raise RowError("empty label")
    return {"label": label, "verb": _text(row, "verb") or label.split()[0], "noun": _text(row, "noun"),
            "boxes": _boxes(row.get("boxes")), "description": _text(row, "description") or None}


# --------------------------------------------------------------------------------------------
# A manifest of your videos


def read_manifest(path: Path, offsets: Offsets = Offsets()) -> tuple[list[Action], list[Reject]]:
    """Plan the pairs of a manifest of your own videos (CSV or JSONL, one row per action)."""
    actions, rejects = [], []
    for n, row in _manifest_rows(path):
        try:
            if isinstance(row, RowError):
                raise row
            actions.append(_manifest_action(row, offsets))
        except RowError as e:
            rejects.append(Reject(_row_key(path, n, row), e.reason, e.detail))
    return actions, rejects


def _row_key(path: Path, line: int, row: Any) -> str:
    """Who a rejected row is in the rejects file: its id when it has one, else file:line."""
    ident = _text(row, "id") if isinstance(row, dict) else ""
    return ident or f"{path.name}:{line}"


def _manifest_action(row: dict, offsets: Offsets) -> Action:
    video = str(row.get("video") or "").strip()
    if not video:
        raise RowError("no video")
    forms = [form for form, cols in FRAME_FORMS.items() if any(_given(row, c) for c in cols)]
    if not forms:
        raise RowError("no frames", "give input_frame/target_frame, input_time/target_time or start_time/stop_time")
    if len(forms) > 1:
        raise RowError("mixes frame forms", f"{' and '.join(forms)}: give only one pair of columns")
    first, second = FRAME_FORMS[forms[0]]
    for col in (first, second):
        if not _given(row, col):
            raise RowError(f"{col} is missing", f"{first} and {second} go together")
    common = _common(row)
    frames, times, extra = None, (None, None), {"video": video}
    if forms[0] == "frames":
        frames = (_frame_number(row[first], first), _frame_number(row[second], second))
        order, ident = frames, ("f" + str(frames[0]), "f" + str(frames[1]))
        extra.update(frame_input=frames[0], frame_target=frames[1])
    elif forms[0] == "times":
        times = order = (_seconds(row[first], first), _seconds(row[second], second))
        ident = ("t" + _number(times[0]), "t" + _number(times[1]))
    else:
        start, stop = _seconds(row[first], first), _seconds(row[second], second)
        if stop < start:
            raise RowError("stop before start", f"{row[first]} > {row[second]}")
        times = (max(0.0, start - offsets.input_before_start), start + offsets.target_fraction * (stop - start))
        order, ident = times, ("s" + _number(start), "e" + _number(stop))
        extra.update(start=start, stop=stop)
    if order[1] < order[0]:
        raise RowError("target before input", f"{row[first]} > {row[second]}")
    return Action(dataset=MANIFEST, video_id=video, action_id=_text(row, "id") or _derived_id(*ident),
                  t_input=times[0], t_target=times[1], frames=frames, extra=extra, **common)


def _number(t: float) -> str:
    return f"{t:.6f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------
# Pairs of images you already have


def read_pairs(path: Path) -> tuple[list[Action], list[Reject]]:
    """Plan the pairs of a JSONL of image pairs; the images are checked when they are read."""
    expected = 'one {"input": "a.jpg", "target": "b.jpg", "label": ...} a line'
    text = _read_text(path, f"--dataset pairs reads a JSONL file, {expected}")
    if not _is_jsonl(path, text):
        raise BadInput(f"{path}: --dataset pairs reads a JSONL file, {expected}")
    collection = path.stem          # the pairs' "video": the file they are listed in
    actions, rejects = [], []
    for n, row in _jsonl_rows(text):
        try:
            if isinstance(row, RowError):
                raise row
            images = [str(row.get(k) or "").strip() for k in ("input", "target")]
            if not all(images):
                raise RowError("no input or target image", "each line names both: \"input\" and \"target\"")
            actions.append(Action(
                dataset=PAIRS, video_id=collection, action_id=_text(row, "id") or _derived_id(*images),
                t_input=None, t_target=None, extra={"input_image": images[0], "target_image": images[1]},
                **_common(row)))
        except RowError as e:
            rejects.append(Reject(_row_key(path, n, row), e.reason, e.detail))
    return actions, rejects


def pairs_from_images(folder: Path, actions: list[Action], size: int, resize: str,
                      encode) -> tuple[list[dict], list[Reject]]:
    """Samples for image pairs (paths relative to `folder`), stored at the configured size like
    extracted frames. A missing file, a non-image or two aspect ratios is a reject, not an error."""
    from PIL import Image, UnidentifiedImageError

    from lego_core.data.resize import resize_image

    samples, rejects = [], []
    for a in actions:
        paths = [folder / a.extra["input_image"], folder / a.extra["target_image"]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            rejects.append(Reject(a.key, "image not found", str(missing[0])))
            continue
        images = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.load()
                    images.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                rejects.append(Reject(a.key, "not an image", f"{p}: {e}"))
                break
        if len(images) < 2:
            continue
        (w0, h0), (w1, h1) = images[0].size, images[1].size
        if abs(w0 * h1 - w1 * h0) > ASPECT_TOLERANCE * max(w0 * h1, w1 * h0):
            rejects.append(Reject(a.key, "aspect ratios differ", f"input {w0}x{h0}, target {w1}x{h1}"))
            continue
        meta = {"dataset": a.dataset, "video_id": a.video_id, "action_id": a.action_id, "label": a.label,
                "verb": a.verb, "noun": a.noun, "width": w0, "height": h0, "boxes": a.boxes,
                "source": IMAGES_SOURCE, **a.extra}
        x, y = (resize_image(im, size, resize) for im in images)
        samples.append(encode(a, x, y, meta))
    return samples, rejects


def pairs_folder(annotations: str) -> Path:
    """Where a pairs file's relative image paths start: the file's own folder."""
    return Path(annotations).resolve().parent

