"""The synthetic kitchen (`world.py`) as real data: videos with annotations in both real formats.

`make_world(folder)` writes one short H.264 clip per layout, half in EPIC-KITCHENS-100's layout
(59.94 fps, `EPIC_100_world.csv` with the 15 columns, and a `--boxes` JSONL for the hands and the
object) and half in Ego4D FHO's (30 fps, `fho_main.json` with critical frames and boxes), plus
`split.json`, which clips are held out: the split is by clip, so no layout is on both sides.

Each action's timeline is made for both datasets' frame rules: the hands rest for 0.5 s before
the start (EPIC's input frame at start − 0.25 s, Ego4D's pre_15 at start − 0.3 s), the acting hand
reaches the object at 35 % of the action, and the end state holds until the stop (EPIC's action
frame at 60 %, Ego4D's pnr at 60 %); then the scene returns to its layout for the next action.

`world_samples(cfg)` renders the same pairs straight to shard samples, without videos: the fast
path for tests that need a trained model, not an extraction.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .world import OBJECTS, Layout, boxes_at_rest, make_layout, render

EPIC_VERB_CLASS = {"take": 0, "wash": 2, "open": 3, "close": 4, "turn-on": 6, "cut": 7}
EPIC_NOUN_CLASS = {"tap": 0, "plate": 2, "drawer": 8, "fridge": 12, "cup": 13, "onion": 16, "carrot": 41,
                   "tomato": 43}
EGO4D_VERB = {"cut": ("cuts", "cut_(something)"), "pick up": ("picks up", "take_(something)"),
              "wash": ("washes", "wash_(something)"), "open": ("opens", "open_(something)"),
              "close": ("closes", "close_(something)"), "turn on": ("turns on", "turn_on_(something)")}
EPIC_FPS = Fraction(60000, 1001)
EGO4D_FPS = 30
REACH, TARGET_AT = 0.35, 0.6   # the hand arrives at 35 % of the action; both datasets' Y is at 60 %


@dataclass(frozen=True)
class WorldConfig:
    clips: int = 112
    test_clips: int = 12                      # held out, whole clips (layouts)
    objects: tuple[str, ...] = tuple(OBJECTS)
    verbs: tuple[str, ...] = ()               # () = every verb; else only these
    objects_per_clip: int = 4
    actions_per_clip: int = 3
    place_margin: float = 0.0                 # object centres kept this far from the thirds' edges
    width: int = 160
    height: int = 160
    seed: int = 0


@dataclass
class Clip:
    video_id: str
    dataset: str                              # "epic" or "ego4d"
    layout: Layout
    actions: list[tuple[str, str, float, float]] = field(default_factory=list)   # verb, noun, start, stop
    test: bool = False

    @property
    def fps(self) -> Fraction:
        return EPIC_FPS if self.dataset == "epic" else Fraction(EGO4D_FPS)

    @property
    def duration(self) -> float:
        return self.actions[-1][3] + 0.9

    def state_at(self, t: float) -> tuple[tuple[str, str] | None, float]:
        """(action, progress) shown at time t: see `render`."""
        for verb, noun, start, stop in self.actions:
            reach = REACH * (stop - start)
            if start <= t < start + reach:
                return (verb, noun), (t - start) / reach
            if start + reach <= t <= stop:
                return (verb, noun), 1.0
            if stop < t < stop + 0.3:
                return (verb, noun), min(0.999, 1 - (t - stop) / 0.3)
        return None, 0.0


def plan_world(cfg: WorldConfig) -> list[Clip]:
    """Every clip's layout and actions, deterministic in `cfg.seed`."""
    rng = np.random.default_rng([cfg.seed, 7])
    clips = []
    for k in range(cfg.clips):
        layout = make_layout(rng, cfg.objects, cfg.objects_per_clip, cfg.place_margin)
        possible = [a for a in layout.actions() if not cfg.verbs or a[0] in cfg.verbs]
        if not possible:
            continue
        order = rng.permutation(len(possible))
        picked, used = [], set()
        for i in order:            # different objects first, then any
            if possible[i][1] not in used:
                picked.append(possible[i])
                used.add(possible[i][1])
        picked += [possible[i] for i in order if possible[i] not in picked]
        picked = picked[: cfg.actions_per_clip]
        dataset = "epic" if k % 2 == 0 else "ego4d"
        vid = f"P90_{k // 2 + 1:02d}" if dataset == "epic" else str(uuid.UUID(bytes=rng.bytes(16), version=4))
        t, actions = 0.3, []
        for verb, noun in picked:
            start = t + 0.55 + float(rng.uniform(0, 0.2))
            stop = start + float(rng.uniform(0.8, 1.2))
            actions.append((verb, noun, round(start, 2), round(stop, 2)))
            t = stop + 0.3
        clips.append(Clip(vid, dataset, layout, actions, test=k >= cfg.clips - cfg.test_clips))
    return clips


def label_of(verb: str, noun: str) -> str:
    return f"{verb} {noun}"


# -------------------------------------------------------------------------------------------------
# Videos and annotations
# -------------------------------------------------------------------------------------------------


def _write_clip(clip: Clip, path: Path, cfg: WorldConfig) -> dict:
    from lego_core.kit.synthetic import write_video

    n = int(clip.duration * clip.fps)
    cache: dict = {}

    def frame(i: int) -> np.ndarray:
        action, progress = clip.state_at(i / clip.fps)
        key = (action, round(progress, 3))
        if key not in cache:
            cache[key] = render(clip.layout, cfg.width, cfg.height, action, progress)
        return cache[key]

    return write_video(path, n, frame, fps=clip.fps, width=cfg.width, height=cfg.height, gop_seconds=1.0,
                       bframes=2, crf=18, threads=1)


def _epic_rows(clip: Clip) -> tuple[list[dict], list[dict]]:
    from lego_core.kit.synthetic_sample import _hms

    rows, boxes = [], []
    for k, (verb, noun, start, stop) in enumerate(clip.actions):
        epic_verb = {"pick up": "take", "turn on": "turn-on"}.get(verb, verb)
        nid = f"{clip.video_id}_{k}"
        rows.append({
            "narration_id": nid, "participant_id": clip.video_id.split("_")[0], "video_id": clip.video_id,
            "narration_timestamp": _hms(start, 3), "start_timestamp": _hms(start, 2), "stop_timestamp": _hms(stop, 2),
            "start_frame": str(int(start * 60)), "stop_frame": str(int(stop * 60)),
            "narration": label_of(verb, noun), "verb": epic_verb, "verb_class": str(EPIC_VERB_CLASS[epic_verb]),
            "noun": noun, "noun_class": str(EPIC_NOUN_CLASS[noun]), "all_nouns": repr([noun]),
            "all_noun_classes": repr([EPIC_NOUN_CLASS[noun]]),
        })
        boxes.append({"narration_id": nid, "boxes": boxes_at_rest(clip.layout, noun)})
    return rows, boxes


def _ego4d_entry(clip: Clip, cfg: WorldConfig) -> dict:
    fps, w, h = EGO4D_FPS, cfg.width, cfg.height
    n_frames = int(clip.duration * fps)
    actions = []
    for k, (verb, noun, start, stop) in enumerate(clip.actions):
        pre, pnr = round((start - 0.3) * fps), round((start + TARGET_AT * (stop - start)) * fps)
        crit = {"pre_45": pre - 30, "pre_30": pre - 15, "pre_15": pre, "pre_frame": round(start * fps),
                "contact_frame": round((start + REACH * (stop - start)) * fps) + 1, "pnr_frame": pnr,
                "post_frame": round(stop * fps)}
        boxes = [{"object_type": b["kind"], "instance_number": 1,
                  "bbox": {"x": round(b["box"][0] * w), "y": round(b["box"][1] * h),
                           "width": round((b["box"][2] - b["box"][0]) * w),
                           "height": round((b["box"][3] - b["box"][1]) * h)},
                  **({"structured_noun": b["name"]} if "name" in b else {})}
                 for b in boxes_at_rest(clip.layout, noun)]
        third, structured = EGO4D_VERB[verb]
        actions.append({
            "uid": f"{clip.video_id[:8]}-a{k:02d}", "start_sec": start, "end_sec": stop,
            "start_frame": round(start * fps), "end_frame": round(stop * fps),
            "narration_timestamp_sec": start, "narration_text": f"#C C {third} the {noun}",
            "structured_verb": structured, "freeform_verb": verb.replace(" ", "_"),
            "critical_frames": crit, "frames": [{"frame_type": "pre_15", "frame_number": pre, "boxes": boxes}],
            "is_valid_action": True, "is_partial": False, "is_rejected": False, "stage": 4,
        })
    return {"video_uid": clip.video_id,
            "video_metadata": {"fps": float(fps), "num_frames": n_frames, "width": w, "height": h,
                               "duration_sec": n_frames / fps},
            "annotated_intervals": [{"clip_id": 0, "clip_uid": f"{clip.video_id[:8]}-clip0", "start_sec": 0.0,
                                     "end_sec": n_frames / fps, "narrated_actions": actions}]}


def make_world(folder, cfg: WorldConfig = WorldConfig(), workers: int = 1) -> dict:
    """Write the world's videos and annotations under `folder`; return the paths.

    EPIC clips: `epic-kitchens/videos/P90/videos/P90_NN.MP4`, `EPIC_100_world.csv`, `boxes.jsonl`;
    Ego4D clips: `ego4d/videos/{uid}.mp4`, `fho_main.json`; `split.json` lists the held-out clips.
    """
    from concurrent.futures import ThreadPoolExecutor

    from lego_core.kit.synthetic_sample import write_epic_csv

    out = Path(folder)
    clips = plan_world(cfg)
    epic, ego = out / "epic-kitchens", out / "ego4d"

    def video_path(c: Clip) -> Path:
        if c.dataset == "epic":
            return epic / "videos" / c.video_id.split("_")[0] / "videos" / f"{c.video_id}.MP4"
        return ego / "videos" / f"{c.video_id}.mp4"

    with ThreadPoolExecutor(max(1, workers)) as pool:   # x264 and PIL release the GIL
        list(pool.map(lambda c: _write_clip(c, video_path(c), cfg), clips))
    rows, boxes = [], []
    for c in clips:
        if c.dataset == "epic":
            r, b = _epic_rows(c)
            rows += r
            boxes += b
    write_epic_csv(epic / "EPIC_100_world.csv", rows)
    _write_json(epic / "boxes.jsonl", None, lines=boxes)
    fho = {"version": "v2", "date": "synthetic", "description": f"lego synthetic kitchen (seed {cfg.seed})",
           "videos": [_ego4d_entry(c, cfg) for c in clips if c.dataset == "ego4d"]}
    _write_json(ego / "fho_main.json", fho)
    split = {"test_videos": sorted(c.video_id for c in clips if c.test), "config": asdict(cfg),
             "scenes": {c.video_id: [o.name for o in c.layout.objects] for c in clips}}
    _write_json(out / "split.json", split)
    return {"epic_csv": str(epic / "EPIC_100_world.csv"), "epic_boxes": str(epic / "boxes.jsonl"),
            "epic_videos": str(epic / "videos"), "ego4d_json": str(ego / "fho_main.json"),
            "ego4d_videos": str(ego / "videos"), "split": str(out / "split.json"),
            "pairs": sum(len(c.actions) for c in clips), "clips": len(clips)}


def _write_json(path: Path, obj, lines: list | None = None) -> None:
    """JSON (or JSON lines) through the sample's atomic writer: temp name, then rename."""
    from lego_core.kit.synthetic_sample import _write_atomic

    text = "".join(json.dumps(x) + "\n" for x in lines) if lines is not None else json.dumps(obj, indent=1)
    _write_atomic(path, lambda f: f.write(text))


# -------------------------------------------------------------------------------------------------
# Straight to shard samples (tests)
# -------------------------------------------------------------------------------------------------


def world_samples(cfg: WorldConfig, split: str = "train") -> Iterator[dict]:
    """The pairs of `split` ("train" or "test") as shard samples (input.jpg, target.jpg, meta.json),
    rendered directly at cfg's size: what `lego extract` makes from the videos, without them."""
    from PIL import Image

    def jpeg(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    for c in plan_world(cfg):
        if c.test != (split == "test"):
            continue
        x = render(c.layout, cfg.width, cfg.height)
        for k, (verb, noun, start, stop) in enumerate(c.actions):
            y = render(c.layout, cfg.width, cfg.height, (verb, noun))
            meta = {"dataset": "world", "video_id": c.video_id, "action_id": str(k), "label": label_of(verb, noun),
                    "verb": verb, "noun": noun, "t_input": start - 0.25, "t_target": start + TARGET_AT * (stop - start),
                    "fps": float(c.fps), "width": cfg.width, "height": cfg.height,
                    "boxes": boxes_at_rest(c.layout, noun)}
            yield {"__key__": f"world-{c.video_id}-{k}", "input.jpg": jpeg(x), "target.jpg": jpeg(y),
                   "meta.json": json.dumps(meta).encode()}

