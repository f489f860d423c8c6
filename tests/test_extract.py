"""`lego extract` end to end on real H.264 videos and annotation files in both real formats."""

import csv
import io
import json
import math
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import LEGO, run_cli, run_lego
from lego_core.kit.synthetic import read_frame_index, render_frame, write_indexed_video
from lego_core.kit.synthetic_sample import make_epic_actions, make_sample, write_epic_csv


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> dict:
    return make_sample(tmp_path_factory.mktemp("sample"), width=384, height=216)


def read_shards(folder: Path, prefix: str = "") -> dict[str, dict]:
    """key -> {field: bytes} over the finished shards in a folder."""
    out: dict[str, dict] = {}
    for path in sorted(folder.glob(f"{prefix}*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, field = m.name.split(".", 1)
                out.setdefault(key, {})[field] = tar.extractfile(m).read()
    return out


def frame_index(jpeg: bytes) -> int:
    return read_frame_index(Image.open(io.BytesIO(jpeg)))


def epic_dirs(sample):
    root = Path(sample["epic_csv"]).parent
    return root / "EPIC_100_sample.csv", root / "videos"


def test_epic_pairs_are_the_papers_frames(sample, tmp_path):
    annotations, videos = epic_dirs(sample)
    result = run_cli("extract", "--dataset", "epic-kitchens", "--annotations", annotations, "--videos", videos,
                     "--out", tmp_path / "epic-%06d.tar", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(annotations)))
    assert summary["written"] == len(rows) and summary["skipped_total"] == 0
    samples = read_shards(tmp_path)
    assert len(samples) == len(rows)
    fps = 60000 / 1001
    for row in rows:
        s = samples[f"epic-kitchens-{row['video_id']}-{row['narration_id']}"]
        meta = json.loads(s["meta.json"])
        start = _seconds(row["start_timestamp"])
        stop = _seconds(row["stop_timestamp"])
        assert meta["t_input"] == pytest.approx(max(0, start - 0.25), abs=1e-6)
        assert meta["t_target"] == pytest.approx(start + 0.6 * (stop - start), abs=1e-6)
        assert frame_index(s["input.jpg"]) == round(meta["t_input"] * fps)
        assert frame_index(s["target.jpg"]) == round(meta["t_target"] * fps)
        assert meta["label"] == row["narration"] and meta["fps"] == pytest.approx(fps)
        assert (meta["width"], meta["height"]) == (384, 216)
        assert Image.open(io.BytesIO(s["input.jpg"])).size == (455, 256)
    assert json.loads((tmp_path / "epic.extract.json").read_text())["dataset"] == "epic-kitchens"


def _seconds(hms: str) -> float:
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_ego4d_pairs_with_boxes_and_skips(sample, tmp_path):
    root = Path(sample["ego4d_json"]).parent
    result = run_cli("extract", "--dataset", "ego4d", "--annotations", root / "fho_main.json",
                     "--videos", root / "videos", "--out", tmp_path / "ego-%06d.tar", "--size", "128",
                     "--resize", "square", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == {"no critical frames": 2, "rejected action": 2}
    samples = read_shards(tmp_path)
    assert len(samples) == summary["written"] == 6
    rejects = [json.loads(x) for x in (tmp_path / "ego.rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["no critical frames"] * 2 + ["rejected action"] * 2
    for s in samples.values():
        meta = json.loads(s["meta.json"])
        assert frame_index(s["input.jpg"]) == meta["frame_input"]
        assert frame_index(s["target.jpg"]) == meta["frame_target"]
        assert Image.open(io.BytesIO(s["target.jpg"])).size == (128, 128)
        assert {b["kind"] for b in meta["boxes"]} >= {"left_hand", "right_hand", "object_of_change"}
        assert all(0 <= v <= 1 for b in meta["boxes"] for v in b["box"])
        assert meta["label"] and " " in meta["label"] and not meta["label"].startswith("#")


def test_bad_rows_and_bad_videos_are_skipped_not_fatal(sample, tmp_path):
    annotations, videos = epic_dirs(sample)
    rows = list(csv.DictReader(open(annotations)))[:3]
    extra = [dict(rows[0], narration_id="P09_901_1", video_id="P09_901"),               # no such video
             dict(rows[0], narration_id="P03_901_1", video_id="P03_901"),               # corrupt video
             dict(rows[0], narration_id="P01_91_99", start_timestamp="00:10:00.00",
                  stop_timestamp="00:10:02.00"),                                         # past the end
             dict(rows[0], narration_id="P01_91_98", start_timestamp="00:00:05.00",
                  stop_timestamp="00:00:04.00"),                                         # stop < start
             dict(rows[0], narration_id="P01_91_97", start_timestamp="soon")]           # unparsable
    write_epic_csv(tmp_path / "a.csv", rows + extra)
    broken = tmp_path / "videos"
    broken.mkdir()
    for p in videos.rglob("*.MP4"):
        os.symlink(p, broken / p.name)
    (broken / "P03_901.mp4").write_bytes(b"not a video" * 100)
    result = run_cli("extract", "--dataset", "epic-kitchens", "--annotations", tmp_path / "a.csv",
                     "--videos", broken, "--out", tmp_path / "out/x-%06d.tar", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["written"] == 3
    assert summary["skipped"] == {"video not found": 1, "unreadable video": 1, "target past the end": 1,
                                  "stop before start": 1, "unparsable time": 1}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "x.rejects.jsonl").read_text().splitlines()]
    assert {r["key"]: r["reason"] for r in rejects}["epic-kitchens-P09_901-P09_901_1"] == "video not found"
    assert len(rejects) == 5


def test_usage_errors_exit_2_with_one_line(sample, tmp_path):
    annotations, videos = epic_dirs(sample)
    cases = [
        ["--dataset", "ego4d", "--annotations", annotations, "--videos", videos, "--out", tmp_path / "a-%d.tar"],
        ["--dataset", "epic-kitchens", "--annotations", annotations, "--videos", tmp_path / "nope",
         "--out", tmp_path / "a-%d.tar"],
        ["--dataset", "epic-kitchens", "--annotations", tmp_path / "missing.csv", "--videos", videos,
         "--out", tmp_path / "a-%d.tar"],
    ]
    for args in cases:
        proc = run_lego("extract", *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lego: error:") and "Traceback" not in proc.stderr
        assert not list(tmp_path.glob("*.tar"))


def test_plan_prints_json_lines_only(sample, tmp_path):
    root = Path(sample["ego4d_json"]).parent
    proc = run_lego("extract", "--dataset", "ego4d", "--annotations", root / "fho_main.json", "--plan",
                    "--rejects", tmp_path / "rejects.jsonl")
    assert proc.returncode == 0, proc.stderr
    plans = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(plans) == 6
    for p in plans:
        assert {"key", "dataset", "video_id", "t_input", "t_target", "label"} <= set(p)
        assert p["t_input"] < p["t_target"]
    assert "skipped 4" in proc.stderr
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 4


def test_workers_give_the_same_shards(tmp_path):
    """Parallel across videos and within a long one: byte-identical shards whatever --workers."""
    rows = make_epic_actions("P01_91", 20.0, 32, seed=3) + make_epic_actions("P02_91", 6.0, 4, seed=3)
    write_epic_csv(tmp_path / "a.csv", rows)
    write_indexed_video(tmp_path / "videos" / "P01_91.mp4", round(20 * 60000 / 1001), width=256, height=144)
    write_indexed_video(tmp_path / "videos" / "P02_91.mp4", round(6 * 60000 / 1001), width=256, height=144)
    for workers in (1, 2):
        result = run_cli("extract", "--dataset", "epic-kitchens", "--annotations", tmp_path / "a.csv",
                         "--videos", tmp_path / "videos", "--out", tmp_path / f"w{workers}/s-%06d.tar",
                         "--workers", workers, "--max-samples-per-shard", 10, "--size", 144)
        assert result.exit_code == 0, result.output
    one, two = sorted((tmp_path / "w1").glob("*.tar")), sorted((tmp_path / "w2").glob("*.tar"))
    assert len(one) == len(two) == 4
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    samples = read_shards(tmp_path / "w2")
    assert len(samples) == 36
    for s in samples.values():
        meta = json.loads(s["meta.json"])
        assert frame_index(s["target.jpg"]) == round(meta["t_target"] * 60000 / 1001)


def test_released_frames_layout(tmp_path):
    """--frames reads DIR/P01/P01_91/frame_0000000001.jpg at 60 fps, frame floor(t * fps) as the CSV numbers them."""
    rows = make_epic_actions("P01_91", 6.0, 3, seed=1)
    write_epic_csv(tmp_path / "a.csv", rows)
    frames = tmp_path / "frames" / "P01" / "P01_91"
    frames.mkdir(parents=True)
    for n in range(1, 361):
        Image.fromarray(render_frame(n, 192, 108)).save(frames / f"frame_{n:010d}.jpg", quality=95)
    result = run_cli("extract", "--dataset", "epic-kitchens", "--annotations", tmp_path / "a.csv",
                     "--frames", tmp_path / "frames", "--out", tmp_path / "s-%06d.tar", "--size", "108", "--json")
    assert result.exit_code == 0, result.output
    samples = read_shards(tmp_path)
    assert len(samples) == 3
    for s in samples.values():
        meta = json.loads(s["meta.json"])
        assert meta["source"] == "frames" and meta["fps"] == 60
        assert frame_index(s["input.jpg"]) == meta["frame_input"] == max(1, math.floor(meta["t_input"] * 60 + 1e-6))
        assert frame_index(s["target.jpg"]) == meta["frame_target"] == math.floor(meta["t_target"] * 60 + 1e-6)


# Real rows of EPIC_100_train.csv (60 fps videos). All but P01_09_0 have a start or stop whose
# nearest frame is one past the CSV's: the CSV floors t * fps.
EPIC_REAL_ROWS = """\
narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes
P01_09_0,P01,P01_09,00:00:01.140,00:00:01.14,00:00:03.00,68,180,adjust lights,adjust,17,light,114,['light'],[114]
P01_09_1,P01,P01_09,00:00:04.170,00:00:03.91,00:00:05.73,234,343,take bag,take,0,bag,19,['bag'],[19]
P01_09_10,P01,P01_09,00:00:25.070,00:00:24.58,00:00:26.13,1474,1567,take soy milk,take,0,milk:soy,64,['milk:soy'],[64]
P02_04_98,P02,P02_04,,00:04:00.15,00:04:01.03,14409,14461,pick up pot,pick-up,0,pot,29,['pot'],[29]
P11_05_63,P11,P11_05,,00:03:35.06,00:03:43.59,12903,13415,slice courgette into pan,slice-into,7,courgette,76,"['courgette', 'pan']","[76, 5]"
P22_14_24,P22,P22_14,,00:00:53.81,00:00:54.67,3228,3280,open cupboard,open,3,cupboard,3,['cupboard'],[3]
"""


def test_frame_number_is_the_csvs_start_and_stop_frame():
    from lego_core.data.annotations import epic_frames_fps, parse_timestamp
    from lego_core.data.extract import frame_number

    for row in csv.DictReader(io.StringIO(EPIC_REAL_ROWS)):
        fps = epic_frames_fps(row["video_id"])
        for when, frame in (("start_timestamp", "start_frame"), ("stop_timestamp", "stop_frame")):
            assert frame_number(parse_timestamp(row[when]), fps) == int(row[frame]), (row["narration_id"], when)
    assert frame_number(2.05, 60) == 123          # 2.05 * 60 = 122.99999999999999 in floats
    assert frame_number(0.0, 60) == frame_number(0.01, 60) == 1   # the files start at frame 1


def test_released_frames_at_start_and_stop_are_the_csvs_frames(tmp_path):
    """With X at the start and Y at the stop, --frames reads exactly the CSV's start_frame/stop_frame files."""
    (tmp_path / "a.csv").write_text(EPIC_REAL_ROWS)
    rows = {r["narration_id"]: r for r in csv.DictReader(io.StringIO(EPIC_REAL_ROWS))}
    for r in rows.values():
        folder = tmp_path / "frames" / r["participant_id"] / r["video_id"]
        folder.mkdir(parents=True, exist_ok=True)
        for n in (int(r["start_frame"]), int(r["stop_frame"])):   # only the files the CSV names
            Image.fromarray(render_frame(n, 192, 108)).save(folder / f"frame_{n:010d}.jpg", quality=95)
    result = run_cli("extract", "--dataset", "epic-kitchens", "--annotations", tmp_path / "a.csv",
                     "--frames", tmp_path / "frames", "--out", tmp_path / "s-%06d.tar", "--size", "108",
                     "--input-offset", "0", "--target-fraction", "1", "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    samples = read_shards(tmp_path)
    assert len(samples) == len(rows)
    for s in samples.values():
        meta = json.loads(s["meta.json"])
        row = rows[meta["narration_id"]]
        assert frame_index(s["input.jpg"]) == meta["frame_input"] == int(row["start_frame"])
        assert frame_index(s["target.jpg"]) == meta["frame_target"] == int(row["stop_frame"])


@pytest.mark.slow
def test_kill_9_then_rerun_writes_every_pair_exactly_once(tmp_path):
    rows = make_epic_actions("P01_91", 40.0, 40, seed=2)
    write_epic_csv(tmp_path / "a.csv", rows)
    write_indexed_video(tmp_path / "videos" / "P01_91.mp4", round(40 * 60000 / 1001), width=256, height=144)
    out = tmp_path / "out"
    args = [LEGO, "extract", "--dataset", "epic-kitchens", "--annotations", str(tmp_path / "a.csv"),
            "--videos", str(tmp_path / "videos"), "--out", str(out / "s-%06d.tar"),
            "--max-samples-per-shard", "2", "--size", "144", "--quality", "100"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.glob("s-*.tar")) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "extraction finished before it could be killed"
    first = len(list(out.glob("s-*.tar")))
    assert 1 <= first < 20
    done = subprocess.run(args + ["--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["already_done"] == 2 * first and summary["written"] == 40 - 2 * first
    keys = []
    for path in sorted(out.glob("s-*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".meta.json")]
    assert sorted(keys) == sorted(f"epic-kitchens-P01_91-{r['narration_id']}" for r in rows)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_progress_on_stderr_results_on_stdout_and_quiet(sample, tmp_path):
    annotations, videos = epic_dirs(sample)
    args = ["extract", "--dataset", "epic-kitchens", "--annotations", annotations, "--videos", videos, "--limit", "3"]
    loud = run_lego(*args, "--out", tmp_path / "a/s-%06d.tar")
    assert loud.returncode == 0 and "3/3" in loud.stderr and "pairs written: 3" in loud.stdout
    quiet = run_lego("-q", *args, "--out", tmp_path / "b/s-%06d.tar")
    assert quiet.returncode == 0 and quiet.stderr == "" and "pairs written: 3" in quiet.stdout
