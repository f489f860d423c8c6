"""Action annotations -> one `Action` per (input frame, action frame) pair to extract.

Two real formats: the EPIC-KITCHENS-100 CSVs (train/validation, 15 columns) and Ego4D FHO's
`fho_main.json`; your own videos' manifests and image pairs are read by `own`. Reading them
touches no video, so `lego extract --plan` is instant even on the full files; rows that cannot
become a pair are returned as `Reject`s with their reason.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from lego_core.data.labels import clean_narration, verb_from_structured
from lego_core.data.schema import make_key
from lego_core.errors import BadInput

EPIC = "epic-kitchens"
EGO4D = "ego4d"
MANIFEST = "manifest"      # your own videos, one row per action (lego_core.data.own)
PAIRS = "pairs"            # your own already-extracted image pairs (lego_core.data.own)
DATASETS = (EPIC, EGO4D, MANIFEST, PAIRS)

EPIC_REQUIRED = ("narration_id", "video_id", "start_timestamp", "stop_timestamp", "narration", "verb", "noun")
# The released RGB frames: 60 fps for the original P01-P31 videos, 50 fps for the 2020 extension
# (videos numbered P01_101, P37_103, ...), whatever the video's own rate.
EPIC_FRAMES_FPS_ORIGINAL = 60.0
EPIC_FRAMES_FPS_EXTENSION = 50.0


@dataclass
class Action:
    """One planned pair: where to take X and Y, and what the sample's meta.json will say."""

    dataset: str
    video_id: str
    action_id: str
    label: str
    verb: str
    noun: str
    t_input: float | None             # seconds; None for frame numbers not yet resolved, and for image pairs
    t_target: float | None
    fps: float | None = None          # annotation's frame rate, when the format gives it
    width: int | None = None
    height: int | None = None
    boxes: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    frames: tuple[int, int] | None = None   # X and Y as frame numbers (from 0), resolved by `at_frame_times`
    description: str | None = None          # a description the user already has: becomes curated.txt
    key: str = field(init=False)

    def __post_init__(self):
        self.key = make_key(self.dataset, self.video_id, self.action_id)

    def at_frame_times(self, frame_time) -> "Action":
        """This action with its frame numbers turned into times by `frame_time(n)` (the video's
        `VideoReader.frame_time`), so that `frame_at` picks exactly frame n."""
        if self.frames is None:
            return self
        return replace(self, t_input=frame_time(self.frames[0]), t_target=frame_time(self.frames[1]))

    def order(self) -> tuple:
        """Where the action sits in its video, for ordering the work only (frame numbers are placed as
        if at 30 fps; their exact times come from the video itself)."""
        start = self.frames[0] / 30.0 if self.frames is not None else (self.t_input or 0.0)
        end = self.frames[1] / 30.0 if self.frames is not None else (self.t_target or 0.0)
        return start, end, self.key

    def plan_record(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "key")}
        for k in ("t_input", "t_target"):
            record[k] = None if record[k] is None else round(record[k], 6)
        return {"key": self.key, **record, **self.extra}


@dataclass
class Reject:
    """An annotation row (or a sample later) that produced no pair, and why."""

    key: str
    reason: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "reason": self.reason, "detail": self.detail})


@dataclass
class Offsets:
    """Where X and Y sit relative to an EPIC-KITCHENS action segment (the paper's rule)."""

    input_before_start: float = 0.25   # X at start - 0.25 s
    target_fraction: float = 0.6       # Y at start + 0.6 * (stop - start)


# --------------------------------------------------------------------------------------------
# EPIC-KITCHENS-100


def parse_timestamp(text: str) -> float:
    """"HH:MM:SS.ss" -> seconds. Raises ValueError on anything else."""
    m = re.fullmatch(r"\s*(\d+):([0-5]?\d):(\d+(?:\.\d*)?)\s*", text or "")
    if not m:
        raise ValueError(f"unparsable time {text!r}")
    h, mnt, s = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(s)


def epic_frames_fps(video_id: str) -> float:
    """The frame rate of the released RGB frames of one EPIC-KITCHENS video."""
    number = video_id.split("_")[-1]
    return EPIC_FRAMES_FPS_EXTENSION if len(number) >= 3 else EPIC_FRAMES_FPS_ORIGINAL


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _literal_list(text: str) -> list[str]:
    """all_nouns is a Python-literal list of strings: "['flour', 'counter']"."""
    return [a or b for a, b in _QUOTED.findall(text or "")]


def read_epic_csv(path: Path, offsets: Offsets = Offsets()) -> tuple[list[Action], list[Reject]]:
    """Plan the pairs of an EPIC-KITCHENS-100 train/validation CSV."""
    hint = "pass the train or validation CSV, or --dataset ego4d for fho_main.json"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in EPIC_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise BadInput(f"{path}: not an EPIC-KITCHENS-100 annotation CSV "
                               f"(missing columns: {', '.join(missing)}); {hint}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadInput(f"{path}: not an EPIC-KITCHENS-100 annotation CSV ({e}); {hint}") from None
    actions, rejects = [], []
    for row in rows:
        video_id, narration_id = row["video_id"].strip(), row["narration_id"].strip()
        key = make_key(EPIC, video_id, narration_id)
        try:
            start, stop = parse_timestamp(row["start_timestamp"]), parse_timestamp(row["stop_timestamp"])
        except ValueError as e:
            rejects.append(Reject(key, "unparsable time", str(e)))
            continue
        if stop < start:
            rejects.append(Reject(key, "stop before start", f"{row['start_timestamp']} > {row['stop_timestamp']}"))
            continue
        label = " ".join(row["narration"].split())
        if not label or not video_id:
            rejects.append(Reject(key, "empty narration or video id"))
            continue
        extra = {
            "narration_id": narration_id,
            "participant_id": row.get("participant_id", ""),
            "start": start,
            "stop": stop,
            "verb_class": _int_or_none(row.get("verb_class")),
            "noun_class": _int_or_none(row.get("noun_class")),
            "all_nouns": _literal_list(row.get("all_nouns", "")),
        }
        actions.append(Action(
            dataset=EPIC, video_id=video_id, action_id=narration_id, label=label,
            verb=row["verb"].strip(), noun=row["noun"].strip(),
            t_input=max(0.0, start - offsets.input_before_start),
            t_target=start + offsets.target_fraction * (stop - start),
            extra=extra,
        ))
    return actions, rejects


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Ego4D FHO

EGO4D_INPUT_FRAME = "pre_15"
EGO4D_TARGET_FRAME = "pnr_frame"
EGO4D_BOX_KINDS = ("left_hand", "right_hand", "object_of_change", "tool")


def read_ego4d_json(path: Path) -> tuple[list[Action], list[Reject]]:
    """Plan the pairs of an Ego4D FHO `fho_main.json`: X at pre_15, Y at the PNR frame."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not an Ego4D FHO annotation file (not JSON: {e}); pass fho_main.json, "
                       "or --dataset epic-kitchens for an EPIC-KITCHENS CSV") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise BadInput(f"{path}: not an Ego4D FHO annotation file (no top-level 'videos' list); "
                       "pass fho_main.json, or --dataset epic-kitchens for an EPIC-KITCHENS CSV")
    actions, rejects = [], []
    for video in data["videos"]:
        video_uid = str(video.get("video_uid", "")).strip()
        meta = video.get("video_metadata") or {}
        fps = float(meta.get("fps") or 30.0)
        width, height = meta.get("width"), meta.get("height")
        for interval_index, interval in enumerate(video.get("annotated_intervals") or []):
            clip = interval.get("clip_uid") or f"clip{interval.get('clip_id', interval_index)}"
            for index, act in enumerate(interval.get("narrated_actions") or []):
                action_id = str(act.get("uid") or f"{clip}_{index}")
                planned = _plan_ego4d_action(act, video_uid, action_id, fps, width, height)
                (actions if isinstance(planned, Action) else rejects).append(planned)
    return actions, rejects


def _plan_ego4d_action(act: dict, video_uid: str, action_id: str, fps: float, width, height) -> Action | Reject:
    key = make_key(EGO4D, video_uid, action_id)
    if act.get("is_rejected"):
        return Reject(key, "rejected action")
    if act.get("is_valid_action") is False:
        return Reject(key, "invalid action")
    critical = act.get("critical_frames") or {}
    if critical.get(EGO4D_INPUT_FRAME) is None or critical.get(EGO4D_TARGET_FRAME) is None:
        return Reject(key, "no critical frames")
    f_in, f_tgt = int(critical[EGO4D_INPUT_FRAME]), int(critical[EGO4D_TARGET_FRAME])
    if f_tgt < f_in:
        return Reject(key, "pnr before pre_15", f"{f_tgt} < {f_in}")
    structured_verb = act.get("structured_verb")
    label = clean_narration(act.get("narration_text") or "", structured_verb)
    if not label:
        return Reject(key, "empty narration")
    frames = act.get("frames") or []
    boxes = _ego4d_boxes(frames, EGO4D_INPUT_FRAME, width, height)
    noun = _ego4d_noun(frames)
    verb = verb_from_structured(structured_verb) or label.split()[0]
    return Action(
        dataset=EGO4D, video_id=video_uid, action_id=action_id, label=label, verb=verb, noun=noun,
        t_input=f_in / fps, t_target=f_tgt / fps, fps=fps,
        width=int(width) if width else None, height=int(height) if height else None, boxes=boxes,
        extra={"frame_input": f_in, "frame_target": f_tgt, "narration": act.get("narration_text", ""),
               "structured_verb": structured_verb or ""},
    )


def _ego4d_boxes(frames: list[dict], frame_type: str, width, height) -> list[dict]:
    """Boxes of one critical frame in relative [0,1] x0,y0,x1,y1 (needs the video's size)."""
    if not width or not height:
        return []
    out = []
    for frame in frames:
        if frame.get("frame_type") != frame_type:
            continue
        for box in frame.get("boxes") or []:
            kind, bb = box.get("object_type"), box.get("bbox") or {}
            if kind not in EGO4D_BOX_KINDS or not all(k in bb for k in ("x", "y", "width", "height")):
                continue
            x0, y0 = bb["x"] / width, bb["y"] / height
            x1, y1 = (bb["x"] + bb["width"]) / width, (bb["y"] + bb["height"]) / height
            entry = {"kind": kind, "box": [round(min(max(v, 0.0), 1.0), 5) for v in (x0, y0, x1, y1)]}
            if box.get("structured_noun"):
                entry["name"] = verb_from_structured(box["structured_noun"])
            out.append(entry)
    return out


def _ego4d_noun(frames: list[dict]) -> str:
    for frame in frames:
        for box in frame.get("boxes") or []:
            if box.get("object_type") == "object_of_change" and box.get("structured_noun"):
                return verb_from_structured(box["structured_noun"])
    return ""


# --------------------------------------------------------------------------------------------


def box_items(boxes: list) -> list[dict]:
    """Boxes as given ([{"kind": ..., "box": [x0, y0, x1, y1], "name": ...}]) in the shape meta.json
    stores. Raises KeyError, TypeError or ValueError for anything else."""
    return [{"kind": str(b["kind"]), "box": [float(v) for v in b["box"]][:4],
             **({"name": str(b["name"])} if b.get("name") else {})} for b in boxes]


def read_boxes_jsonl(path: Path) -> dict[str, list[dict]]:
    """Optional boxes for EPIC-KITCHENS rows: one JSON object a line,
    {"narration_id": "P01_09_0", "boxes": [{"kind": "left_hand", "box": [x0, y0, x1, y1], "name": ...}]}
    (or "key" instead of "narration_id"), coordinates relative to the frame in [0, 1]."""
    boxes: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                ident = obj.get("narration_id") or obj["key"]
                items = box_items(obj["boxes"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise BadInput(f"{path}:{n}: not a boxes line ({e}); expected "
                               '{"narration_id": ..., "boxes": [{"kind": ..., "box": [x0, y0, x1, y1]}]}') from None
            boxes[str(ident)] = items
    return boxes


def read_annotations(dataset: str, path: Path, *, offsets: Offsets = Offsets(),
                     boxes_file: Path | None = None) -> tuple[list[Action], list[Reject]]:
    """Plan every pair of an annotation file; duplicates of an earlier key are rejected."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"annotations file not found: {path}")
    if dataset == EPIC:
        actions, rejects = read_epic_csv(path, offsets)
    elif dataset == EGO4D:
        actions, rejects = read_ego4d_json(path)
    elif dataset in (MANIFEST, PAIRS):
        from lego_core.data import own

        actions, rejects = (own.read_manifest(path, offsets) if dataset == MANIFEST else own.read_pairs(path))
    else:
        raise BadInput(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if boxes_file is not None:
        extra_boxes = read_boxes_jsonl(Path(boxes_file))
        for a in actions:
            found = extra_boxes.get(a.action_id) or extra_boxes.get(a.key)
            if found:
                a.boxes = found
    seen, unique = set(), []
    for a in actions:
        if a.key in seen:
            rejects.append(Reject(a.key, "duplicate key"))
            continue
        seen.add(a.key)
        unique.append(a)
    return unique, rejects
