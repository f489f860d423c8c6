"""`lego extract`: annotations + videos (or released RGB frames) -> (X, Y) pairs in shards.

The plan (which frames, which labels) comes from `annotations`; this module finds each video,
grabs its frames in one pass (`video.grab_frames`), in parallel across videos, and writes the
samples to shards in a fixed order. A rerun with the same --out skips every key already in a
finished shard, so a killed job resumes without writing any pair twice.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image

from lego_core.data.annotations import (
    EPIC, MANIFEST, PAIRS, Action, Offsets, Reject, epic_frames_fps, read_annotations,
)
from lego_core.atomic import write_atomic
from lego_core.errors import BadInput
from lego_core.provenance import pin_settings

log = logging.getLogger("lego.extract")


@dataclass
class ExtractConfig:
    dataset: str
    annotations: str
    out: str                                   # shard pattern, e.g. out/epic-%06d.tar
    videos: str | None = None
    frames: str | None = None
    size: int = 256                            # stored frames: short side (or square) in pixels; 0 keeps the original
    resize: str = "short"                      # "short" keeps the aspect ratio, "square" squashes to size x size
    quality: int = 95                          # JPEG quality
    workers: int = 0                           # 0: one per available core, at most 8
    limit: int | None = None
    input_before_start: float = 0.25           # EPIC-KITCHENS: X at start - 0.25 s
    target_fraction: float = 0.6               # EPIC-KITCHENS: Y at start + 0.6 (stop - start)
    frames_fps: float | None = None            # override the released frames' rate (60 / 50 fps)
    boxes: str | None = None                   # optional JSONL of boxes for EPIC-KITCHENS rows
    max_samples_per_shard: int = 1000
    max_shard_size: int = 1 << 30
    rejects: str | None = None                 # JSONL of skipped pairs; default beside the shards
    overwrite: bool = False

    def offsets(self) -> Offsets:
        return Offsets(self.input_before_start, self.target_fraction)


@dataclass
class ExtractSummary:
    written: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rejects_file: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = dict(self.skipped)
        d["skipped_total"] = sum(self.skipped.values())
        return d

    def lines(self) -> list[str]:
        out = [f"pairs written: {self.written} in {self.seconds:.1f}s"
               + (f" (another {self.already_done} were already done)" if self.already_done else "")]
        from lego_core.data.shards import skipped_lines

        out.extend(skipped_lines(self.skipped, self.rejects_file))
        out.extend(f"shard: {s}" for s in self.shards)
        return out


# ---------------------------------------------------------------------------------------------
# Planning


def plan(cfg: ExtractConfig) -> tuple[list[Action], list[Reject]]:
    """Every pair the annotations ask for (first `limit`), and the rows that make none."""
    actions, rejects = read_annotations(cfg.dataset, Path(cfg.annotations), offsets=cfg.offsets(),
                                        boxes_file=Path(cfg.boxes) if cfg.boxes else None)
    if cfg.limit is not None:
        actions = actions[: cfg.limit]
    return actions, rejects


def write_plan(cfg: ExtractConfig, out: TextIO) -> tuple[int, int]:
    """`lego extract --plan`: one JSON line per planned pair to `out` and, when `cfg.rejects`
    names a file, the rows that make none to it (written atomically); reads only the annotations.
    Returns (pairs planned, rows skipped)."""
    actions, skipped = plan(cfg)
    if cfg.rejects:
        write_atomic(cfg.rejects, "".join(r.to_json() + "\n" for r in skipped))
    for a in actions:
        out.write(json.dumps(a.plan_record()) + "\n")
    return len(actions), len(skipped)


# ---------------------------------------------------------------------------------------------
# Finding the sources


def index_videos(root: Path) -> dict[str, Path]:
    """video_id -> file, for `root/ID.ext` and EPIC's `root/P01/videos/ID.ext`, any case of extension."""
    from lego_core.data.video import VIDEO_EXTENSIONS

    found: dict[str, Path] = {}
    for folder in [root, *sorted(p for p in root.glob("*/videos") if p.is_dir())]:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                found.setdefault(path.stem, path)
    return found


def find_frames_dir(root: Path, video_id: str) -> Path | None:
    """EPIC's released frames: root/P01/P01_11/, root/P01/rgb_frames/P01_11/ or root/P01_11/."""
    participant = video_id.split("_")[0]
    for cand in (root / participant / video_id, root / participant / "rgb_frames" / video_id, root / video_id):
        if cand.is_dir():
            return cand
    return None


# ---------------------------------------------------------------------------------------------
# Per-video work (runs in worker processes)


@dataclass
class VideoJob:
    video_id: str
    source: str | None            # a video file or a frames folder; None: not found
    mode: str                     # "video", "frames" or "images" (a folder of image pairs)
    actions: list[Action]
    size: int
    resize: str
    quality: int
    frames_fps: float | None = None
    decoder_threads: bool = True      # off when several workers already share the cores


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _sample(action: Action, x: Image.Image, y: Image.Image, meta: dict, quality: int) -> dict:
    """One sample; a description the annotations already give is its curated.txt."""
    sample = {"__key__": action.key, "input.jpg": _jpeg(x, quality), "target.jpg": _jpeg(y, quality),
              "meta.json": meta}
    if action.description:
        sample["curated.txt"] = action.description
    return sample


def _meta(action: Action, fps: float, width: int, height: int, times: tuple[float, float], source: str) -> dict:
    return {
        "dataset": action.dataset, "video_id": action.video_id, "action_id": action.action_id,
        "label": action.label, "verb": action.verb, "noun": action.noun,
        "t_input": round(action.t_input, 6), "t_target": round(action.t_target, 6),
        "fps": fps, "width": width, "height": height, "boxes": action.boxes,
        "frame_time_input": round(times[0], 6), "frame_time_target": round(times[1], 6),
        "source": source, **action.extra,
    }


def extract_video(job: VideoJob) -> tuple[list[dict], list[Reject]]:
    """All pairs of one video. Never raises for bad data: failures come back as rejects."""
    if job.source is None:
        what = "video not found" if job.mode == "video" else "frames folder not found"
        return [], [Reject(a.key, what, job.video_id) for a in job.actions]
    try:
        if job.mode == "video":
            return _pairs_from_video(job)
        if job.mode == "images":
            from lego_core.data.own import pairs_from_images

            return pairs_from_images(Path(job.source), job.actions, job.size, job.resize,
                                     lambda a, x, y, meta: _sample(a, x, y, meta, job.quality))
        return _pairs_from_frames(job)
    except Exception as e:  # noqa: BLE001 - one broken video must not end a long job
        return [], [Reject(a.key, "video failed", f"{type(e).__name__}: {e}") for a in job.actions]


def _pairs_from_video(job: VideoJob) -> tuple[list[dict], list[Reject]]:
    from lego_core.data.video import FrameError, VideoReader

    try:
        reader = VideoReader(job.source, size=job.size, resize=job.resize, threads=job.decoder_threads)
    except FrameError as e:
        return [], [Reject(a.key, e.reason, e.detail) for a in job.actions]
    samples, rejects, actions = [], [], []
    with reader:
        for a in job.actions:
            try:
                actions.append(a.at_frame_times(reader.frame_time))
            except FrameError as e:
                rejects.append(Reject(a.key, e.reason, e.detail))
        requests = sorted({t for a in actions for t in (a.t_input, a.t_target)})
        grabbed = {}
        for t in requests:
            try:
                grabbed[t] = reader.frame_at(t)
            except FrameError as e:
                grabbed[t] = e
        info = reader.info
    for a in actions:
        x, y = grabbed[a.t_input], grabbed[a.t_target]
        bad = x if isinstance(x, FrameError) else y if isinstance(y, FrameError) else None
        if bad is not None:
            rejects.append(Reject(a.key, bad.reason, bad.detail))
            continue
        meta = _meta(a, info.fps, info.width, info.height, (x.time, y.time), "video")
        samples.append(_sample(a, x.image, y.image, meta, job.quality))
    return samples, rejects


def frame_number(t: float, fps: float) -> int:
    """The released frame file (frame_%010d.jpg) for time t, numbered as the annotations number them.

    EPIC-KITCHENS-100's CSV start_frame/stop_frame, which name these files, are floor(t * fps),
    not the nearest frame (00:00:03.91 at 60 fps is frame 234, not 235); X and Y are not CSV
    frames, so they follow the same rule. The epsilon keeps products that should be whole but
    land just under (2.05 * 60 = 122.99999...) on their frame; the files start at 1."""
    return max(1, int(t * fps + 1e-6))


def _pairs_from_frames(job: VideoJob) -> tuple[list[dict], list[Reject]]:
    from lego_core.data.resize import resize_image

    fps = job.frames_fps or epic_frames_fps(job.video_id)
    folder = Path(job.source)
    samples, rejects = [], []
    for a in job.actions:
        numbers = [frame_number(t, fps) for t in (a.t_input, a.t_target)]
        paths = [folder / f"frame_{n:010d}.jpg" for n in numbers]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            rejects.append(Reject(a.key, "frame not found", str(missing[0])))
            continue
        try:
            images = []
            for p in paths:
                with Image.open(p) as im:
                    im.load()
                    images.append(im.convert("RGB"))
        except OSError as e:
            rejects.append(Reject(a.key, "unreadable frame", str(e)))
            continue
        width, height = images[0].size
        meta = _meta(a, fps, width, height, (numbers[0] / fps, numbers[1] / fps), "frames")
        meta.update(frame_input=numbers[0], frame_target=numbers[1])
        x, y = (resize_image(im, job.size, job.resize) for im in images)
        samples.append(_sample(a, x, y, meta, job.quality))
    return samples, rejects


# ---------------------------------------------------------------------------------------------
# The job


def _jobs(actions: list[Action], cfg: ExtractConfig, workers: int) -> list[VideoJob]:
    """One job per video, its actions in time order; long videos split when workers would idle."""
    by_video: dict[str, list[Action]] = {}
    for a in actions:
        by_video.setdefault(a.video_id, []).append(a)
    if cfg.dataset == PAIRS:
        from lego_core.data.own import pairs_folder

        source, mode = {v: str(pairs_folder(cfg.annotations)) for v in by_video}, "images"
    elif cfg.dataset == MANIFEST:       # the video column is a path under --videos
        source = {v: str(Path(cfg.videos) / v) if (Path(cfg.videos) / v).is_file() else None for v in by_video}
        mode = "video"
    elif cfg.videos:
        index = index_videos(Path(cfg.videos))
        source = {v: str(index[v]) if v in index else None for v in by_video}
        mode = "video"
    else:
        root = Path(cfg.frames)
        source = {v: str(d) if (d := find_frames_dir(root, v)) else None for v in by_video}
        mode = "frames"
    jobs = []
    for video_id, acts in sorted(by_video.items()):
        acts.sort(key=Action.order)
        for chunk in _split(acts, _pieces(len(acts), len(actions), workers)):
            jobs.append(VideoJob(video_id, source[video_id], mode, chunk, cfg.size, cfg.resize,
                                 cfg.quality, cfg.frames_fps, decoder_threads=workers == 1))
    return jobs


def _pieces(n_video: int, n_total: int, workers: int) -> int:
    """How many parts to cut a video into so that about 2 jobs per worker exist; each part still
    reads its stretch of the video in one pass, so only the cut points cost an extra seek."""
    if workers <= 1:
        return 1
    return max(1, min(n_video // 8, round(2 * workers * n_video / max(n_total, 1))))


def _split(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i: i + size] for i in range(0, len(items), size)]


def check_config(cfg: ExtractConfig) -> None:
    """Usage errors before any work: exactly one source, existing folders, sane numbers."""
    if cfg.dataset == PAIRS:
        if cfg.videos or cfg.frames:
            raise BadInput("--dataset pairs reads images named in the --annotations file; drop --videos/--frames")
    elif bool(cfg.videos) == bool(cfg.frames):
        raise BadInput("give exactly one of --videos DIR or --frames DIR")
    folder = cfg.videos or cfg.frames
    if folder and not Path(folder).is_dir():
        raise BadInput(f"{'videos' if cfg.videos else 'frames'} folder does not exist: {folder}")
    if cfg.frames and cfg.dataset != EPIC:
        raise BadInput("--frames reads EPIC-KITCHENS' released RGB frames; for other datasets pass --videos DIR")
    if cfg.resize not in ("short", "square"):
        raise BadInput(f"--resize must be 'short' or 'square', not {cfg.resize!r}")
    if not 1 <= cfg.quality <= 100:
        raise BadInput(f"--quality must be in 1..100, not {cfg.quality}")
    if cfg.size < 0 or cfg.workers < 0 or cfg.max_samples_per_shard < 1:
        raise BadInput("--size and --workers must be >= 0, --max-samples-per-shard >= 1")


def available_cores() -> int:
    """Cores this process may use (a SLURM or cgroup CPU set, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool_map(jobs: list[VideoJob], workers: int):
    """Results in job order; worker processes when asked (spawned: safe whatever the parent imported)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, extract_video(job)
        return
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from zip(jobs, pool.imap(extract_video, jobs))


def extract(cfg: ExtractConfig, *, progress: bool = True) -> ExtractSummary:
    """Run the whole extraction; resumable. Returns what was written and skipped."""
    from tqdm import tqdm

    from lego_core.data import shards

    check_config(cfg)
    workers = cfg.workers or min(8, available_cores())
    started = time.perf_counter()
    actions, rejects = plan(cfg)
    pattern = shards.shard_pattern(cfg.out)
    out_dir = Path(pattern).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    pin_settings(shards.sidecar(pattern, "extract.json"), content_settings(cfg), out=cfg.out, overwrite=cfg.overwrite,
                 has_output=bool(shards.finished_shards(pattern)), extra=asdict(cfg))
    done, start_index = shards.prepare_output(pattern, overwrite=cfg.overwrite)
    todo = [a for a in actions if a.key not in done]
    summary = ExtractSummary(already_done=len(actions) - len(todo))
    summary.rejects_file = cfg.rejects or shards.sidecar(pattern, "rejects.jsonl")

    with open(summary.rejects_file, "w", encoding="utf-8") as rejects_out, \
            shards.ShardWriter(pattern, max_samples=cfg.max_samples_per_shard, max_size=cfg.max_shard_size,
                               start_index=start_index) as writer, \
            tqdm(total=len(todo), unit="pair", desc="extract", disable=not progress, dynamic_ncols=True) as bar:

        def skip(r: Reject) -> None:
            summary.skipped[r.reason] += 1
            rejects_out.write(r.to_json() + "\n")
            log.debug("skipped %s: %s %s", r.key, r.reason, r.detail)

        for r in rejects:
            skip(r)
        for job, (samples, failed) in _pool_map(_jobs(todo, cfg, workers), workers):
            for sample in samples:
                writer.write(sample)
            for r in failed:
                skip(r)
            rejects_out.flush()
            summary.written += len(samples)
            bar.update(len(job.actions))
    summary.shards = [str(p) for p in shards.finished_shards(pattern)]
    summary.seconds = time.perf_counter() - started
    if summary.skipped:
        log.warning("skipped %d pairs (%s); see %s", sum(summary.skipped.values()),
                    ", ".join(f"{r}: {n}" for r, n in summary.skipped.most_common()), summary.rejects_file)
    return summary


def content_settings(cfg: ExtractConfig) -> dict:
    """The settings that decide what a pair contains (not --limit, --workers or shard sizes):
    a rerun onto shards made with other ones is refused (`pin_settings`)."""
    def where(p):
        return os.path.abspath(p) if p else None

    return {"dataset": cfg.dataset, "annotations": where(cfg.annotations), "videos": where(cfg.videos),
            "frames": where(cfg.frames), "boxes": where(cfg.boxes), "size": cfg.size, "resize": cfg.resize,
            "quality": cfg.quality, "input_before_start": cfg.input_before_start,
            "target_fraction": cfg.target_fraction, "frames_fps": cfg.frames_fps}
