"""Synthetic indexed videos: the code survives the real pipeline, the files look like camera files
(B-frames, regular GOPs, NTSC time bases), and the sample's annotations are in the real formats."""

import ast
import csv
import io
import json
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from lego_core.kit import synthetic as S
from lego_core.kit import synthetic_sample as SS


def _pipeline_views(rgb: np.ndarray):
    """What extraction does to a frame: resize to short side 256, or squash to 256², then JPEG 90."""
    im = Image.fromarray(rgb)
    w, h = im.size
    short = (round(w * 256 / h), 256) if w >= h else (256, round(h * 256 / w))
    for size in (short, (256, 256)):
        buf = io.BytesIO()
        im.resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
        buf.seek(0)
        yield Image.open(buf)


def _decode(path):
    """(index read from the picture, frame.time, picture type, key_frame) per frame, display order."""
    out = []
    with av.open(str(path)) as c:
        for fr in c.decode(video=0):
            rgb = fr.to_ndarray(format="rgb24")
            out.append((rgb, fr.time, av.video.frame.PictureType(fr.pict_type).name, fr.key_frame))
    return out


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080)])
def test_index_round_trip_through_h264_resize_jpeg(tmp_path, size):
    n = 90 if size[0] == 640 else 8
    S.write_indexed_video(tmp_path / "v.mp4", n, width=size[0], height=size[1], crf=23)
    frames = _decode(tmp_path / "v.mp4")
    assert len(frames) == n
    for i, (rgb, *_rest) in enumerate(frames):
        assert S.read_frame_index(rgb) == i
        for view in _pipeline_views(rgb):
            assert S.read_frame_index(view) == i


@pytest.mark.parametrize("fps,gop", [(Fraction(60000, 1001), 60), (30, 30), (50, 50)])
def test_bframes_gop_and_timestamps(tmp_path, fps, gop):
    n = 2 * gop + 15
    info = S.write_indexed_video(tmp_path / "v.MP4", n, fps=fps, width=320, height=180)
    assert info["gop"] == gop and info["n_frames"] == n
    assert info["duration"] == pytest.approx(n / float(fps))
    frames = _decode(tmp_path / "v.MP4")
    types = [t for _, _, t, _ in frames]
    assert "B" in types, "encoder wrote no B-frames"
    assert [i for i, f in enumerate(frames) if f[3]] == list(range(0, n, gop))
    for i, (rgb, t, _, _) in enumerate(frames):
        assert S.read_frame_index(rgb) == i
        assert t == pytest.approx(i / float(fps), abs=1e-6)
    with av.open(str(tmp_path / "v.MP4")) as c:
        assert c.streams.video[0].average_rate == Fraction(fps)


def test_frames_move_and_code_rejects_garbage():
    a, b = S.render_frame(10, 640, 360), S.render_frame(11, 640, 360)
    below_band = slice(round(S.CODE_BAND * 360) + 1, None)
    assert (a[below_band] != b[below_band]).any(), "the hands must move between frames"
    assert np.array_equal(S.render_frame(7, 64, 36, seed=3), S.render_frame(7, 64, 36, seed=3))
    noise = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    for bad in (noise, np.zeros((360, 640, 3), np.uint8), np.full((100, 100, 3), 255, np.uint8)):
        with pytest.raises(ValueError):
            S.read_frame_index(bad)
    flipped = S.render_frame(1234, 640, 360)
    flipped[: round(S.CODE_BAND * 360) // 2, 640 * 5 // 14 : 640 * 6 // 14] ^= 255  # one data bit
    with pytest.raises(ValueError):
        S.read_frame_index(flipped)
    with pytest.raises(ValueError):
        S.render_frame(S.MAX_INDEX + 1, 64, 36)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, SS.make_sample(out, epic_seconds=8, ego4d_seconds=10, width=320, height=180)


def _video_duration(path) -> tuple[float, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base), s.frames


def test_sample_epic_annotations(sample):
    out, paths = sample
    assert paths["epic_videos"][0] == str(out / "epic-kitchens/videos/P01/videos/P01_91.MP4")
    with open(paths["epic_csv"], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == SS.EPIC_COLUMNS and len(SS.EPIC_COLUMNS) == 15
    with open(paths["epic_video_info"], newline="") as f:
        info = {r["video_id"]: r for r in csv.DictReader(f)}
    assert set(info) == {"P01_91", "P02_91"} and len(rows) == 16
    for r in rows:
        dur, _ = _video_duration(out / f"epic-kitchens/videos/{r['participant_id']}/videos/{r['video_id']}.MP4")
        assert float(info[r["video_id"]]["duration"]) == pytest.approx(dur, abs=1e-3)
        assert info[r["video_id"]]["resolution"] == "320x180"
        start, stop = SS._seconds(r["start_timestamp"]), SS._seconds(r["stop_timestamp"])
        assert len(r["start_timestamp"].split(".")[1]) == 2
        assert 0 <= start - 0.25 and start < stop and start + 0.6 * (stop - start) < dur
        assert int(r["start_frame"]) == int(start * 60 + 1e-6)
        nouns, classes = ast.literal_eval(r["all_nouns"]), ast.literal_eval(r["all_noun_classes"])
        assert nouns[0] == r["noun"] and classes[0] == int(r["noun_class"]) and len(nouns) == len(classes)
        assert r["narration_id"].startswith(r["video_id"] + "_")


def test_sample_ego4d_annotations(sample):
    out, paths = sample
    with open(paths["ego4d_json"]) as f:
        fho = json.load(f)
    assert set(fho) == {"version", "date", "description", "metadata", "videos"}
    seen_null = seen_rejected = 0
    for v in fho["videos"]:
        meta = v["video_metadata"]
        assert set(v) == {"video_uid", "video_metadata", "annotated_intervals"}
        assert (out / "ego4d/videos" / f"{v['video_uid']}.mp4").is_file()
        dur, n = _video_duration(out / "ego4d/videos" / f"{v['video_uid']}.mp4")
        assert meta["fps"] == 30.0 and n == meta["num_frames"] and dur == pytest.approx(meta["duration_sec"])
        for clip in v["annotated_intervals"]:
            for a in clip["narrated_actions"]:
                assert a["narration_text"].startswith("#C C ") and a["structured_verb"].endswith("_(something)")
                assert {"is_valid_action", "is_rejected", "is_partial", "frames", "uid"} <= set(a)
                assert 0 <= a["start_sec"] < a["end_sec"] <= meta["duration_sec"]
                seen_rejected += a["is_rejected"]
                if a["critical_frames"] is None:
                    seen_null += 1
                    continue
                crit = a["critical_frames"]
                assert list(crit) == SS.CRITICAL
                assert all(0 <= crit[k] < meta["num_frames"] for k in crit)
                assert crit["pre_15"] < crit["contact_frame"] < crit["pnr_frame"] < crit["post_frame"]
                assert {f["frame_type"]: f["frame_number"] for f in a["frames"]} == crit
                for fr in a["frames"]:
                    kinds = {b["object_type"]: b for b in fr["boxes"]}
                    assert {"left_hand", "right_hand", "object_of_change"} <= set(kinds)
                    assert kinds["object_of_change"]["structured_noun"] in a["narration_text"]
                    for b in fr["boxes"]:
                        bb = b["bbox"]
                        assert bb["x"] >= 0 and bb["y"] >= 0 and bb["width"] > 0 and bb["height"] > 0
                        assert bb["x"] + bb["width"] <= meta["width"] and bb["y"] + bb["height"] <= meta["height"]
                # around the PNR the right hand is on the object of change
                pnr = {b["object_type"]: b["bbox"] for b in a["frames"][SS.CRITICAL.index("pnr_frame")]["boxes"]}
                h, o = pnr["right_hand"], pnr["object_of_change"]
                assert h["x"] < o["x"] + o["width"] and o["x"] < h["x"] + h["width"]
                assert h["y"] < o["y"] + o["height"] and o["y"] < h["y"] + h["height"]
    assert seen_null >= 1 and seen_rejected >= 1
