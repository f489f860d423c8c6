"""Frame-exact grabbing on real H.264 files (59.94 fps, B-frames, 1 s GOP) whose frames encode their index."""

import random
from fractions import Fraction

import pytest

from lego_core.kit.synthetic import read_frame_index, write_indexed_video
from lego_core.data.resize import output_size
from lego_core.data.video import FrameError, VideoReader, grab_frames

NTSC = Fraction(60000, 1001)


@pytest.fixture(scope="module")
def video_5994(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "P01_91.MP4"
    info = write_indexed_video(path, 480, fps=NTSC, width=384, height=216, gop_seconds=1.0, bframes=3)
    return path, info


def nearest_index(t: float, fps: float, n: int) -> int:
    return min(max(round(t * fps), 0), n - 1)


def test_nearest_frame_is_exact_for_random_and_dense_targets(video_5994):
    path, info = video_5994
    fps, n = float(NTSC), info["n_frames"]
    rng = random.Random(0)
    times = [rng.uniform(0, (n - 1) / fps) for _ in range(120)]
    times += [i / fps + 0.002 for i in range(200, 260)]      # consecutive frames, read forward
    times += [0.0, (n - 1) / fps, 3.0, 3.0, 1.4 / fps]     # start, last frame, duplicates
    results = grab_frames(path, times, size=256)
    for t, r in zip(times, results):
        assert not isinstance(r, FrameError), (t, r)
        want = nearest_index(t, fps, n)
        assert read_frame_index(r.image) == want, t
        assert r.time == pytest.approx(want / fps, abs=1e-6)
        assert r.image.size == (455, 256)


def test_unsorted_targets_and_square_output(video_5994):
    path, info = video_5994
    fps = float(NTSC)
    times = [7.0, 0.5, 6.99, 2.0, 0.51]
    results = grab_frames(path, times, size=256, resize="square")
    assert [read_frame_index(r.image) for r in results] == [nearest_index(t, fps, 480) for t in times]
    assert results[0].image.size == (256, 256)


def test_reader_goes_forward_within_a_gop_and_seeks_across(video_5994, monkeypatch):
    path, _ = video_5994
    seeks = []
    with VideoReader(path, size=64) as reader:
        real = reader._decode_from
        monkeypatch.setattr(reader, "_decode_from", lambda t: (seeks.append(t), real(t))[1])
        for t in (1.05, 1.2, 1.4, 1.6):          # one GOP (1 s): a single seek
            reader.frame_at(t)
        assert len(seeks) == 1
        reader.frame_at(6.5)                     # far ahead: seek instead of decoding 5 s
        assert len(seeks) == 2


def test_past_the_end_and_bad_files(video_5994, tmp_path):
    path, info = video_5994
    results = grab_frames(path, [info["duration"] + 1.0, 1.0])
    assert isinstance(results[0], FrameError) and results[0].reason == "target past the end"
    assert read_frame_index(results[1].image) == nearest_index(1.0, float(NTSC), 480)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(FrameError, match="unreadable video"):
        VideoReader(bad)


def test_30fps_canonical_video(tmp_path):
    path = tmp_path / "uid.mp4"
    write_indexed_video(path, 90, fps=30, width=256, height=144)
    frames = [292 % 90, 10, 89]
    results = grab_frames(path, [f / 30 for f in frames], size=144)
    assert [read_frame_index(r.image) for r in results] == frames


def test_output_size():
    assert output_size(1920, 1080, 256, "short") == (455, 256)
    assert output_size(1080, 1920, 256, "short") == (256, 455)
    assert output_size(1920, 1080, 256, "square") == (256, 256)
    assert output_size(1920, 1080, 0, "short") == (1920, 1080)
