#!/usr/bin/env python
"""Make the bundled synthetic sample (EPIC-KITCHENS- and Ego4D-style videos + annotations), or a
benchmark video with an EPIC-style CSV.

    python scripts/make_sample.py OUT_DIR [--seed 0]
    python scripts/make_sample.py --bench-video bench/P01_902.MP4 --minutes 2 --width 1920 --height 1080

Every frame carries its own index (lego_core.kit.synthetic.read_frame_index), so extraction can be
checked frame-exactly. The benchmark CSV goes next to the video (same name, .csv) unless --bench-csv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from lego_core.kit import synthetic as S  # noqa: E402
from lego_core.kit import synthetic_sample as SS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", help="folder for the sample (epic-kitchens/, ego4d/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-video", type=Path, help="write a benchmark video here instead (59.94 fps)")
    p.add_argument("--bench-csv", type=Path, help="its EPIC-style CSV (default: VIDEO with .csv)")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--actions", type=int, default=0, help="actions in the CSV (default: max(50, 1 per 2 s))")
    a = p.parse_args(argv)
    if (a.out_dir is None) == (a.bench_video is None):
        p.error("give exactly one of OUT_DIR or --bench-video")
    t = time.perf_counter()
    if a.out_dir:
        out = SS.make_sample(a.out_dir, seed=a.seed)
    else:
        vid = a.bench_video.stem
        n = round(a.minutes * 60 * SS.EPIC_FPS)
        duration = float(n / SS.EPIC_FPS)
        rows = SS.make_epic_actions(vid, duration, a.actions or max(50, round(duration / 2)), a.seed)
        info = S.write_indexed_video(a.bench_video, n, fps=SS.EPIC_FPS, width=a.width, height=a.height,
                                     gop_seconds=1.0, bframes=3, seed=a.seed,
                                     hands=SS.epic_hands(rows, SS.EPIC_FPS, a.seed))
        csv_path = SS.write_epic_csv(a.bench_csv or a.bench_video.with_suffix(".csv"), rows)
        out = {**info, "csv": str(csv_path), "n_actions": len(rows)}
    print(f"done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
