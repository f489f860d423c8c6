"""Your own data: `lego extract --dataset manifest` on real H.264 videos, `--dataset pairs` on image files."""

import csv
import io
import json
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from lego_core.kit.synthetic import read_frame_index, write_indexed_video
from test_extract import read_shards

NTSC = 60000 / 1001


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two short videos whose frames show their own index: one at 59.94 fps in a subfolder, one at 25."""
    root = tmp_path_factory.mktemp("own") / "videos"
    write_indexed_video(root / "kitchen" / "day1.mp4", 150, width=192, height=108)
    write_indexed_video(root / "desk.mov", 60, fps=Fraction(25), width=192, height=108)
    return root


# Rows in every form; the comment says which frames they must give.
ROWS = [
    {"video": "kitchen/day1.mp4", "label": "cut onion", "input_frame": 10, "target_frame": 97,
     "description": "The right hand slices the onion with a knife.",
     "boxes": json.dumps([{"kind": "right_hand", "box": [0.5, 0.4, 0.7, 0.8]}])},        # 10, 97
    {"video": "kitchen/day1.mp4", "label": "open drawer", "input_time": 0.51, "target_time": 2.0,
     "id": "drawer-1"},                                                                     # 31, 120
    {"video": "desk.mov", "label": "pick up pen", "input_frame": 0, "target_frame": 59},     # 0, 59 at 25 fps
    {"video": "desk.mov", "label": "put down pen", "input_time": 1.01, "target_time": 2.35},  # 25, 59 (2.36 s)
    {"video": "desk.mov", "label": "move cup", "start_time": 1.0, "stop_time": 2.0},          # 0.75 s, 1.6 s: 19, 40
    {"video": "desk.mov", "label": "mixed", "input_frame": 3, "target_time": 1.0},            # rejected
    {"video": "desk.mov", "label": "too late", "input_frame": 3, "target_frame": 400},        # past the end
    {"video": "nowhere.mp4", "label": "lost", "input_frame": 1, "target_frame": 2},           # no video
]
EXPECTED = {  # key -> (input frame, target frame)
    "manifest-kitchen_day1_mp4-f10-f97": (10, 97),
    "manifest-kitchen_day1_mp4-drawer-1": (31, 120),
    "manifest-desk_mov-f0-f59": (0, 59),
    "manifest-desk_mov-t1_01-t2_35": (25, 59),
    "manifest-desk_mov-s1-e2": (19, 40),
}
COLUMNS = ["video", "label", "id", "input_frame", "target_frame", "input_time", "target_time",
           "start_time", "stop_time", "description", "boxes"]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def frame_index(jpeg: bytes) -> int:
    return read_frame_index(Image.open(io.BytesIO(jpeg)))


def extract(*args):
    result = run_cli("-q", "extract", *map(str, args), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def rejects(summary) -> dict[str, str]:
    return {r["key"]: r["reason"] for r in map(json.loads, open(summary["rejects_file"]))}


def test_manifest_csv_and_jsonl_are_frame_exact_with_reasons(videos, tmp_path):
    manifest = write_csv(tmp_path / "actions.csv", ROWS)
    summary = extract("--dataset", "manifest", "--annotations", manifest, "--videos", videos,
                      "--out", tmp_path / "csv/mine-%06d.tar", "--size", 72, "--workers", 1)
    assert summary["written"] == len(EXPECTED)
    assert rejects(summary) == {"actions.csv:7": "mixes frame forms",
                                "manifest-desk_mov-f3-f400": "target past the end",
                                "manifest-nowhere_mp4-f1-f2": "video not found"}
    samples = read_shards(tmp_path / "csv")
    assert {k: (frame_index(s["input.jpg"]), frame_index(s["target.jpg"])) for k, s in samples.items()} == EXPECTED

    first = samples["manifest-kitchen_day1_mp4-f10-f97"]
    meta = json.loads(first["meta.json"])
    assert meta["video_id"] == "kitchen/day1.mp4" and meta["label"] == "cut onion" and meta["verb"] == "cut"
    assert (meta["frame_input"], meta["frame_target"]) == (10, 97)
    assert meta["t_target"] == pytest.approx(97 / NTSC, abs=1e-6) and meta["fps"] == pytest.approx(NTSC)
    assert meta["boxes"] == [{"kind": "right_hand", "box": [0.5, 0.4, 0.7, 0.8]}]
    assert first["curated.txt"].decode() == ROWS[0]["description"]
    assert "curated.txt" not in samples["manifest-desk_mov-f0-f59"]
    assert Image.open(io.BytesIO(first["input.jpg"])).size == (128, 72)
    segment = json.loads(samples["manifest-desk_mov-s1-e2"]["meta.json"])
    assert (segment["t_input"], segment["t_target"]) == (pytest.approx(0.75), pytest.approx(1.6))

    report = run_cli("inspect", tmp_path / "csv", "--json", "--strict", "--full")
    assert report.exit_code == 0, report.output

    # The same rows as JSONL (numbers and lists, not text), in parallel: the same samples.
    jsonl = tmp_path / "actions.jsonl"
    jsonl.write_text("".join(json.dumps({k: json.loads(v) if k == "boxes" else v for k, v in r.items()}) + "\n"
                             for r in ROWS))
    summary = extract("--dataset", "manifest", "--annotations", jsonl, "--videos", videos,
                      "--out", tmp_path / "jsonl/mine-%06d.tar", "--size", 72, "--workers", 2)
    assert summary["written"] == len(EXPECTED) and summary["skipped_total"] == 3
    assert read_shards(tmp_path / "jsonl") == samples


def test_manifest_rerun_after_adding_a_row_writes_only_that_row(videos, tmp_path):
    """Keys come from the video and the two frames, so a row added above the others moves nothing."""
    manifest = write_csv(tmp_path / "a.csv", ROWS[2:4])
    out = tmp_path / "out/mine-%06d.tar"
    args = ("--dataset", "manifest", "--annotations", manifest, "--videos", videos, "--out", out, "--workers", 1)
    assert extract(*args)["written"] == 2
    write_csv(manifest, [ROWS[4], *ROWS[2:4]])
    summary = extract(*args)
    assert (summary["written"], summary["already_done"]) == (1, 2)
    assert set(read_shards(tmp_path / "out")) == {"manifest-desk_mov-f0-f59", "manifest-desk_mov-t1_01-t2_35",
                                                  "manifest-desk_mov-s1-e2"}


@pytest.mark.parametrize("row, reason", [
    ({"input_frame": 5}, "target_frame is missing"),
    ({"input_frame": 9, "target_frame": 4}, "target before input"),
    ({"input_frame": 1.5, "target_frame": 4}, "input_frame is not a frame number"),
    ({"input_time": "soon", "target_time": 4}, "input_time is not a time in seconds"),
    ({"start_time": 3, "stop_time": 2}, "stop before start"),
    ({}, "no frames"),
    ({"input_frame": 1, "target_frame": 4, "boxes": "[{\"kind\": \"paw\", \"box\": [0, 0, 1, 1]}]"}, "bad box"),
])
def test_manifest_rows_that_make_no_pair_say_why(row, reason, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "v.mp4", "label": "cut onion", **row}) + "\n")
    result = run_cli("extract", "--dataset", "manifest", "--annotations", manifest, "--plan")
    assert result.exit_code == 0 and result.stdout == ""
    assert "planned 0 pairs, skipped 1 rows" in result.stderr
    rejected = tmp_path / "r.jsonl"
    run_cli("extract", "--dataset", "manifest", "--annotations", manifest, "--plan", "--rejects", rejected)
    assert json.loads(rejected.read_text())["reason"] == reason


def test_plan_from_python_writes_what_extract_plan_writes(tmp_path):
    """`write_plan` (the stage called from Python) prints the same plan and writes the same rejects
    file as `lego extract --plan --rejects`."""
    import io

    from lego_core.data.extract import ExtractConfig, write_plan

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"video": "v.mp4", "label": "cut onion", **row}) for row in (
        {"input_frame": 1, "target_frame": 4}, {"start_time": 3, "stop_time": 2})) + "\n")
    cli = run_cli("extract", "--dataset", "manifest", "--annotations", manifest, "--plan", "--rejects",
                  tmp_path / "cli.jsonl")
    assert cli.exit_code == 0, cli.output
    out = io.StringIO()
    counts = write_plan(ExtractConfig(dataset="manifest", annotations=str(manifest), out="",
                                      rejects=str(tmp_path / "py.jsonl")), out)
    assert counts == (1, 1) and "planned 1 pairs, skipped 1 rows" in cli.stderr
    assert out.getvalue() == cli.stdout and len(out.getvalue().splitlines()) == 1
    assert (tmp_path / "py.jsonl").read_text() == (tmp_path / "cli.jsonl").read_text()
    assert json.loads((tmp_path / "py.jsonl").read_text())["reason"] == "stop before start"


def test_manifest_without_label_column_is_one_line_exit_2(videos, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,input_frame,target_frame\nkitchen/day1.mp4,1,2\n")
    result = run_cli("extract", "--dataset", "manifest", "--annotations", bad, "--videos", videos,
                     "--out", tmp_path / "o-%06d.tar")
    assert result.exit_code == 2
    assert "missing: label" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Pairs of images


def _image(path: Path, size, colour) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name if path.parent.name == "pairs" else f"{path.parent.name}/{path.name}"


@pytest.fixture
def pairs(tmp_path) -> Path:
    root = tmp_path / "pairs"
    lines = [
        {"input": _image(root / "a/in.jpg", (320, 240), "red"),
         "target": _image(root / "a/out.png", (160, 120), "blue"), "label": "cut onion", "id": "0001",
         "description": "A knife halves the onion on the board.",
         "boxes": [{"kind": "object", "name": "onion", "box": [0.2, 0.2, 0.6, 0.7]}]},
        {"input": _image(root / "b_in.jpg", (200, 400), "green"),
         "target": _image(root / "b_out.jpg", (200, 400), "white"), "label": "open door"},
        {"input": "gone.jpg", "target": "b_out.jpg", "label": "missing file", "id": "0003"},
        {"input": "not_an_image.jpg", "target": "b_out.jpg", "label": "text file", "id": "0004"},
        {"input": _image(root / "wide.jpg", (400, 200), "black"), "target": "b_out.jpg", "label": "wide", "id": "0005"},
        {"input": "a/in.jpg", "label": "no target", "id": "0006"},
    ]
    (root / "not_an_image.jpg").write_text("hello, I am text\n")
    (root / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "pairs.jsonl"


def test_pairs_become_shards_and_bad_ones_are_skipped_with_reasons(pairs, tmp_path):
    summary = extract("--dataset", "pairs", "--annotations", pairs, "--out", tmp_path / "out/pairs-%06d.tar",
                      "--size", 64)
    assert summary["written"] == 2
    assert rejects(summary) == {"pairs-pairs-0003": "image not found", "pairs-pairs-0004": "not an image",
                                "pairs-pairs-0005": "aspect ratios differ", "0006": "no input or target image"}
    samples = read_shards(tmp_path / "out")
    assert set(samples) == {"pairs-pairs-0001", "pairs-pairs-b_in_jpg-b_out_jpg"}
    first = samples["pairs-pairs-0001"]
    meta = json.loads(first["meta.json"])
    assert meta["source"] == "images" and (meta["input_image"], meta["target_image"]) == ("a/in.jpg", "a/out.png")
    assert (meta["width"], meta["height"]) == (320, 240) and "t_input" not in meta
    assert meta["boxes"] == [{"kind": "object", "name": "onion", "box": [0.2, 0.2, 0.6, 0.7]}]
    assert first["curated.txt"].decode() == "A knife halves the onion on the board."
    # stored at the configured size, as extracted frames are: short side 64, both images alike
    for name in ("input.jpg", "target.jpg"):
        assert Image.open(io.BytesIO(first[name])).size == (85, 64)
    assert Image.open(io.BytesIO(samples["pairs-pairs-b_in_jpg-b_out_jpg"]["target.jpg"])).size == (64, 128)

    report = run_cli("inspect", tmp_path / "out", "--json", "--strict", "--full")
    assert report.exit_code == 0, report.output


def test_pairs_take_no_videos_folder(pairs, tmp_path):
    result = run_cli("extract", "--dataset", "pairs", "--annotations", pairs, "--videos", tmp_path,
                     "--out", tmp_path / "o-%06d.tar")
    assert result.exit_code == 2 and "drop --videos" in result.stderr


def test_curate_keeps_descriptions_samples_already_have(pairs, tmp_path):
    extract("--dataset", "pairs", "--annotations", pairs, "--out", tmp_path / "pairs/p-%06d.tar")
    result = run_cli("curate", tmp_path / "pairs", "--out", tmp_path / "curated/c-%06d.tar", "--backend", "template")
    assert result.exit_code == 0, result.output
    assert "kept 1 description the samples already had" in result.stdout
    samples = read_shards(tmp_path / "curated")
    assert samples["pairs-pairs-0001"]["curated.txt"].decode() == "A knife halves the onion on the board."
    assert samples["pairs-pairs-b_in_jpg-b_out_jpg"]["curated.txt"]      # written by the template


def test_frame_numbers_are_exact_in_a_variable_frame_rate_video(tmp_path):
    """A phone that drops frames: frame n is not at n / fps, and the manifest's frame n is still frame n."""
    write_indexed_video(tmp_path / "v/phone.mp4", 60, fps=Fraction(30), width=96, height=64,
                        timestamps=lambda i: i + i // 10)           # every 10th frame slot skipped
    manifest = write_csv(tmp_path / "m.csv", [
        {"video": "phone.mp4", "label": "cut onion", "input_frame": 5, "target_frame": 45},
        {"video": "phone.mp4", "label": "open lid", "input_time": 1.0, "target_time": 1.99},
        {"video": "phone.mp4", "label": "too far", "input_frame": 5, "target_frame": 60},
    ])
    summary = extract("--dataset", "manifest", "--annotations", manifest, "--videos", tmp_path / "v",
                      "--out", tmp_path / "out/m-%06d.tar", "--size", 0)
    assert rejects(summary) == {"manifest-phone_mp4-f5-f60": "frame past the end"}
    samples = read_shards(tmp_path / "out")
    got = {k: (frame_index(s["input.jpg"]), frame_index(s["target.jpg"])) for k, s in samples.items()}
    # by time: pts 30 is frame 28 (28 + 2), 1.99 s is nearest pts 60 = frame 55 (55 + 5)
    assert got == {"manifest-phone_mp4-f5-f45": (5, 45), "manifest-phone_mp4-t1-t1_99": (28, 55)}
    meta = json.loads(samples["manifest-phone_mp4-f5-f45"]["meta.json"])
    assert meta["t_target"] == pytest.approx(49 / 30)
