"""`lego extract`: annotations + videos -> (input frame, action frame) pairs in shards."""

from __future__ import annotations

import sys

import click

from lego_cli.common import echo_result, quiet


@click.command("extract", context_settings={"show_default": True})
@click.option("--dataset", required=True, type=click.Choice(["epic-kitchens", "ego4d", "manifest", "pairs"]),
              help="Annotation format: EPIC-KITCHENS-100 CSV, Ego4D FHO fho_main.json, a manifest of your own "
                   "videos (CSV/JSONL), or a JSONL of your own image pairs.")
@click.option("--annotations", required=True, type=click.Path(dir_okay=False),
              help="The annotation file (EPIC_100_train.csv / EPIC_100_validation.csv, fho_main.json, "
                   "your manifest, or your pairs JSONL).")
@click.option("--videos", type=click.Path(file_okay=False),
              help="Videos folder: DIR/P01/videos/P01_11.MP4 or DIR/P01_11.MP4 (EPIC), DIR/{video_uid}.mp4 (Ego4D), "
                   "the folder a manifest's video paths start from (manifest); not for pairs.")
@click.option("--frames", type=click.Path(file_okay=False),
              help="EPIC-KITCHENS' released RGB frames instead of videos: DIR/P01/P01_11/frame_0000000001.jpg.")
@click.option("--out", help="Output shard pattern, e.g. data/epic-%06d.tar (required unless --plan).")
@click.option("--size", default=256, help="Stored frame size in pixels (0 keeps the original).")
@click.option("--resize", type=click.Choice(["short", "square"]), default="short",
              help="'short': short side = --size, aspect kept; 'square': --size x --size.")
@click.option("--quality", default=95, help="JPEG quality of the stored frames.")
@click.option("--workers", default=0,
              help="Processes decoding videos (and parts of long ones) in parallel; 0: one per "
                   "available core, at most 8.")
@click.option("--limit", type=int, help="Only the first N planned pairs.")
@click.option("--input-offset", default=0.25,
              help="EPIC-KITCHENS and manifest start_time/stop_time rows: input frame this many "
                   "seconds before the start.")
@click.option("--target-fraction", default=0.6,
              help="EPIC-KITCHENS and manifest start_time/stop_time rows: action frame at start + F * (stop - start).")
@click.option("--frames-fps", type=float,
              help="Rate of the released frames (default: 60 for P01-P31 videos, 50 for the extension).")
@click.option("--boxes", type=click.Path(dir_okay=False, exists=True),
              help='Optional JSONL of boxes for EPIC rows: {"narration_id": ..., "boxes": [{"kind": '
                   '..., "box": [x0,y0,x1,y1]}]}.')
@click.option("--max-samples-per-shard", default=1000, help="Start a new shard after this many samples.")
@click.option("--max-shard-size", default=1 << 30, help="...or after this many bytes.")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="JSONL of skipped pairs with their reasons (default: beside the shards; with --plan: none).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Read only the annotations; print one JSON line per planned pair.")
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming an earlier run with the same --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def command(ctx, dataset, annotations, videos, frames, out, size, resize, quality, workers, limit, input_offset,
            target_fraction, frames_fps, boxes, max_samples_per_shard, max_shard_size, rejects, plan_only,
            overwrite, as_json):
    """Extract (input frame, action frame) pairs from egocentric videos into WebDataset shards.

    \b
    EPIC-KITCHENS-100: input frame at start - 0.25 s, action frame at start + 0.6 (stop - start).
    Ego4D FHO: input frame at the pre_15 critical frame, action frame at the PNR frame.
    manifest: your videos, one CSV/JSONL row per action (video, label, and input_frame/target_frame,
    input_time/target_time or start_time/stop_time). pairs: your images, one JSONL line per pair
    ({"input": "a.jpg", "target": "b.jpg", "label": ...}). See "Your own data" in the README.
    Each video is read in one forward pass; rerunning the same command resumes where it stopped.

    \b
    Examples:
      lego extract --dataset epic-kitchens --annotations EPIC_100_train.csv \\
                   --videos EPIC-KITCHENS/ --out data/epic-train-%06d.tar --workers 8
      lego extract --dataset ego4d --annotations fho_main.json --videos v2/full_scale --out data/ego4d-%06d.tar
      lego extract --dataset manifest --annotations my_actions.csv --videos my_videos/ --out data/mine-%06d.tar
      lego extract --dataset pairs --annotations my_pairs.jsonl --out data/pairs-%06d.tar
      lego extract --dataset epic-kitchens --annotations EPIC_100_validation.csv --plan | head
    """
    from lego_core.data.extract import ExtractConfig, extract, write_plan
    from lego_core.errors import BadInput

    cfg = ExtractConfig(
        dataset=dataset, annotations=annotations, out=out or "", videos=videos, frames=frames, size=size,
        resize=resize, quality=quality, workers=workers, limit=limit, input_before_start=input_offset,
        target_fraction=target_fraction, frames_fps=frames_fps, boxes=boxes,
        max_samples_per_shard=max_samples_per_shard, max_shard_size=max_shard_size, rejects=rejects,
        overwrite=overwrite,
    )
    if plan_only:
        planned, skipped = write_plan(cfg, sys.stdout)
        click.echo(f"lego: planned {planned} pairs, skipped {skipped} rows", err=True)
        return
    if not out:
        raise BadInput("--out PATTERN is required (e.g. --out data/epic-%06d.tar), or use --plan")
    summary = extract(cfg, progress=not quiet(ctx))
    echo_result(summary.to_dict() if as_json else "\n".join(summary.lines()), as_json)
    if summary.written == 0 and summary.already_done == 0 and summary.skipped:
        # nothing to train on: every pair was rejected (wrong --videos folder, unreadable videos, ...)
        top, n = summary.skipped.most_common(1)[0]
        raise BadInput(f"no pair written: all {sum(summary.skipped.values())} were rejected (most: {top}, {n}); "
                       f"see {summary.rejects_file}")
