"""Benchmark: `lego extract` vs the naive per-frame approach, same frames, one run.

A synthetic 1080p 59.94 fps H.264 video (B-frames, 1 s keyframe interval) of >= 2 minutes with
>= 50 EPIC-KITCHENS-style actions. The naive approach opens the file, seeks and decodes separately
for every frame (PyAV defaults), then resizes and JPEG-encodes like lego does. Prints frames/s of
both and the ratio, and checks both took the very same frames (the frames encode their index).

    .venv/bin/python scripts/bench/extract.py [--minutes 2] [--actions 50] [--workdir out/bench]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import av
from PIL import Image

from lego_core.data.annotations import read_annotations
from lego_core.data.extract import ExtractConfig, available_cores, extract
from lego_core.kit.synthetic import read_frame_index, write_indexed_video
from lego_core.kit.synthetic_sample import make_epic_actions, write_epic_csv
from lego_core.data.video import resize_image

FPS = 60000 / 1001


def make_inputs(workdir: Path, minutes: float, n_actions: int) -> tuple[Path, Path]:
    video = workdir / "videos" / "P01" / "videos" / "P01_90.MP4"
    csv = workdir / f"EPIC_bench_{n_actions}.csv"
    n_frames = round(minutes * 60 * FPS)
    if not video.exists():
        t = time.perf_counter()
        write_indexed_video(video, n_frames, fps=FPS, width=1920, height=1080, gop_seconds=1.0, bframes=3)
        print(f"made {video} ({n_frames} frames, 1920x1080) in {time.perf_counter() - t:.0f}s")
    write_epic_csv(csv, make_epic_actions("P01_90", n_frames / FPS, n_actions, seed=0))
    return video, csv


def naive(video: Path, times: list[float], size: int) -> list[Image.Image]:
    """What one writes first: for every frame, open, seek to the keyframe before it, decode on."""
    out = []
    for t in times:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            best = None
            for frame in container.decode(stream):
                if best is None or abs(frame.time - t) < abs(best.time - t):
                    best = frame
                if frame.time >= t:
                    break
            out.append(resize_image(best.to_image(), size))
    return out


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--actions", type=int, default=50)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workdir", default="out/bench/extract")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    video, csv = make_inputs(workdir, args.minutes, args.actions)
    actions, _ = read_annotations("epic-kitchens", csv)
    times = [t for a in actions for t in (a.t_input, a.t_target)]

    runs = {}
    for workers in (1, 0):   # one process; the default (one per available core)
        shutil.rmtree(workdir / "shards", ignore_errors=True)
        cfg = ExtractConfig(dataset="epic-kitchens", annotations=str(csv), videos=str(workdir / "videos"),
                            out=str(workdir / "shards" / "s-%06d.tar"), size=args.size, workers=workers)
        t0 = time.perf_counter()
        summary = extract(cfg, progress=False)
        runs[workers] = time.perf_counter() - t0
        assert summary.written == len(actions), summary.lines()

    t0 = time.perf_counter()
    naive_frames = [jpeg(im) for im in naive(video, times, args.size)]
    naive_s = time.perf_counter() - t0

    ours = {}
    for path in summary.shards:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                ours[m.name] = tar.extractfile(m).read()
    ours_idx = [read_frame_index(Image.open(io.BytesIO(ours[f"{a.key}.{f}"]))) for a in actions
                for f in ("input.jpg", "target.jpg")]
    naive_idx = [read_frame_index(Image.open(io.BytesIO(b))) for b in naive_frames]
    exact = [min(round(t * FPS), round(args.minutes * 60 * FPS) - 1) for t in times]
    assert ours_idx == exact, "lego extract took a wrong frame"
    same = sum(a == b for a, b in zip(ours_idx, naive_idx))

    n = len(times)
    one, default = runs[1], runs[0]
    result = {
        "video": "1920x1080 59.94 fps H.264, B-frames, 1 s GOP", "minutes": args.minutes,
        "actions": len(actions), "frames": n, "cores": available_cores(),
        "naive_fps": round(n / naive_s, 2),
        "lego_extract_workers1_fps": round(n / one, 2), "ratio_workers1": round(naive_s / one, 2),
        "lego_extract_default_fps": round(n / default, 2), "ratio_default": round(naive_s / default, 2),
        "same_frames_as_naive": f"{same}/{n}", "frame_exact": True,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
