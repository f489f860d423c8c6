"""The bundled sample's annotations: EPIC-KITCHENS-100 CSVs and Ego4D FHO ``fho_main.json`` for
synthetic videos (`lego_core.kit.synthetic`), in the real layouts, with made-up ids.

`make_sample` writes the whole sample: 2 EPIC-style and 2 Ego4D-style videos with their
annotations. numpy, PIL and PyAV only: no torch.
"""

from __future__ import annotations

import csv
import json
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lego_core.atomic import atomic_file
from lego_core.kit.synthetic import (
    ActionHands, hand_box, object_box, write_indexed_video,
)

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
    """Text through ``write(f)``, atomically (newlines as written: the CSVs end lines with \\n)."""
    with atomic_file(path, "w", newline="") as f:
        write(f)


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
    folder layouts, with annotations in the real formats. Ids are made up (P01_91, P02_91:
    two digits, so the released frames would be 60 fps; and seeded UUIDs) so they never
    collide with real ones. Returns the paths written.
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
