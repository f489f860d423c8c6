"""`lego generate` for real use: batching, several images per action, defaults from the model
folder, memory options (GPU-only ones refused on the CPU) and the Python API."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from lego_core.diffusion.build import build_from_pretrained, write_model_info
from lego_core.kit import make_tiny_instruct_pix2pix

FAST = ["--steps", "2", "--size", "64"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    base = make_tiny_instruct_pix2pix(root / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="description", vllm=16).save_pretrained(root / "lego")
    return root / "lego"


@pytest.fixture
def frame(tmp_path):
    path = tmp_path / "frame.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path)
    return path


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_batched_images_equal_one_at_a_time_and_n_images_per_action(model, frame, tmp_path):
    """3 actions × 2 images in one UNet batch of 6 equal the images made one at a time (per-image
    seeded generators), within 2/255; image i of N is the image of seed + i."""
    prompts = ["cut onion", "open fridge", "wash plate"]
    batched = run_cli("generate", frame, *prompts, "--model", model, "-o", tmp_path / "b", "--num-images", "2",
                      "--batch-size", "8", "--json", *FAST)
    assert batched.exit_code == 0, batched.output
    records = [json.loads(x) for x in batched.stdout.splitlines()]
    assert [(r["output"].split("/")[-1], r["seed"]) for r in records] == [
        ("frame-cut-onion-0.png", 0), ("frame-cut-onion-1.png", 1), ("frame-open-fridge-0.png", 0),
        ("frame-open-fridge-1.png", 1), ("frame-wash-plate-0.png", 0), ("frame-wash-plate-1.png", 1)]
    single = run_cli("generate", frame, *prompts, "--model", model, "-o", tmp_path / "s", "--num-images", "2",
                     "--batch-size", "1", *FAST)
    assert single.exit_code == 0, single.output
    for name in (r["output"].split("/")[-1] for r in records):
        a, b = pixels(tmp_path / "b" / name), pixels(tmp_path / "s" / name)
        assert a.shape == (64, 114, 3) and np.abs(a - b).max() <= 2, name
    seed1 = run_cli("generate", frame, "open fridge", "--model", model, "-o", tmp_path / "seed1.png", "--seed", "1",
                    *FAST)
    assert seed1.exit_code == 0
    assert np.abs(pixels(tmp_path / "seed1.png") - pixels(tmp_path / "b" / "frame-open-fridge-1.png")).max() <= 2
    assert not np.array_equal(pixels(tmp_path / "b" / "frame-cut-onion-0.png"),
                              pixels(tmp_path / "b" / "frame-cut-onion-1.png"))


def test_batch_file_with_n_images_names_by_key_and_resumes(model, frame, tmp_path):
    requests = tmp_path / "req.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"key": "k1", "image": str(frame), "prompt": "cut onion"},
        {"key": "k2", "image": str(tmp_path / "missing.jpg"), "prompt": "wash plate"},
        {"key": "k3", "image": str(frame), "prompt": "open fridge"},
    ]) + "\n")
    out = tmp_path / "gen"
    first = run_cli("generate", "--batch", requests, "--model", model, "-o", out, "--num-images", "2", "--json", *FAST)
    assert first.exit_code == 0, first.output
    assert [json.loads(x)["key"] for x in first.stdout.splitlines()] == ["k1", "k1", "k3", "k3"]
    assert sorted(p.name for p in out.iterdir()) == ["k1-0.png", "k1-1.png", "k3-0.png", "k3-1.png"]
    assert "skipped 1" in first.stderr
    (out / "k3-1.png").unlink()                                     # k3 is unfinished: only it is redone
    again = run_cli("generate", "--batch", requests, "--model", model, "-o", out, "--num-images", "2", "--json", *FAST)
    assert [json.loads(x)["output"].split("/")[-1] for x in again.stdout.splitlines()] == ["k3-0.png", "k3-1.png"]
    assert "1 request(s) already had an image" in again.stderr


def test_generate_batch_from_python_does_what_the_batch_command_does(model, frame, tmp_path):
    """The stage called from Python writes the same files, returns the records `--json` prints and
    skips / resumes as the command does."""
    from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions, read_batch_file
    from lego_core.diffusion.generate_files import generate_batch

    requests = tmp_path / "req.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"key": "k1", "image": str(frame), "prompt": "cut onion"},
        {"key": "k2", "image": str(frame), "prompt": "  "},
        {"key": "k1", "image": str(frame), "prompt": "open fridge"},
    ]) + "\n")
    cli = run_cli("generate", "--batch", requests, "--model", model, "-o", tmp_path / "cli", "--json", *FAST)
    assert cli.exit_code == 0, cli.output
    generator = ActionFrameGenerator(str(model), None, GenerateOptions(steps=2, size=64, progress=False))
    summary = generate_batch(generator, read_batch_file(requests), tmp_path / "py")
    assert [r["output"].split("/")[-1] for r in summary.records] == ["k1.png"]
    assert [{**r, "output": None} for r in summary.records] == \
        [{**json.loads(x), "output": None} for x in cli.stdout.splitlines()]
    assert np.abs(pixels(tmp_path / "py" / "k1.png") - pixels(tmp_path / "cli" / "k1.png")).max() <= 2
    assert [f"lego: {line}" for line in summary.lines()] == [x for x in cli.stderr.splitlines()
                                                             if x.startswith("lego:")]
    assert [key for key, _ in summary.skipped] == ["k2", "k1"]
    again = generate_batch(generator, read_batch_file(requests), tmp_path / "py")
    assert (again.records, again.already_done) == ([], 1)


def test_size_and_steps_default_to_what_the_model_folder_records(model, frame, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    write_model_info(folder, resolution=32, validation_steps=3)
    result = run_cli("generate", frame, "cut onion", "--model", folder, "-o", tmp_path / "a.png", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["size"], record["steps"]) == (32, 3)
    assert Image.open(tmp_path / "a.png").size == (57, 32)          # short side = the training resolution
    given = run_cli("generate", frame, "cut onion", "--model", folder, "-o", tmp_path / "b.png", "--json", *FAST)
    assert json.loads(given.stdout)["size"] == 64 and Image.open(tmp_path / "b.png").size == (114, 64)


@pytest.mark.parametrize("flags, says", [
    (["--dtype", "fp16"], "--dtype fp16 needs a CUDA GPU"),
    (["--offload", "model"], "--offload model"),
    (["--offload", "sequential"], "--offload sequential"),
    (["--vllm", "LLAVA", "--vllm-quantize", "4bit"], "--vllm-quantize 4bit"),
    (["--vllm", "LLAVA", "--vllm-dtype", "fp16"], "--vllm-dtype fp16 needs a CUDA GPU"),
])
def test_gpu_only_options_are_one_line_on_the_cpu(model, frame, tmp_path, flags, says):
    flags = [str(tmp_path / "llava") if f == "LLAVA" else f for f in flags]
    for cmd in (["generate", frame, "cut onion"], ["evaluate", REPO / "shards" / "ego4d-000000.tar"]):
        result = run_cli(*cmd, "--model", model, "--device", "cpu", "-o", tmp_path / "out", *flags, *FAST)
        assert result.exit_code == 2, (cmd, result.output)
        assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()


def test_bf16_runs_on_the_cpu(model, frame, tmp_path):
    result = run_cli("generate", frame, "cut onion", "--model", model, "--dtype", "bf16", "-o", tmp_path / "a.png",
                     *FAST)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "a.png").size == (114, 64)


def test_the_cli_frees_the_vllm_before_diffusing_a_python_caller_keeps_it(frame, tmp_path, monkeypatch):
    """With a VLLM, the requests are described in batches (greedy: the same as one at a time), the
    one-shot CLI drops the VLLM before the diffusion model goes to the device, the API keeps it."""
    from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions
    from lego_core.kit import make_tiny_llava

    llava = make_tiny_llava(tmp_path / "llava")
    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="description+joint", vllm=llava).save_pretrained(tmp_path / "joint")
    vllm_held = []
    place = ActionFrameGenerator._place
    monkeypatch.setattr(ActionFrameGenerator, "_place",
                        lambda self: (vllm_held.append(self.vllm is not None), place(self))[1])
    args = ["--model", tmp_path / "joint", "--vllm", llava, "--greedy", "--max-new-tokens", "6", "--json", *FAST]
    runs = {}
    for batch in ("8", "1"):
        result = run_cli("generate", frame, "cut onion", "open fridge", *args, "-o", tmp_path / batch, "--batch-size",
                         batch)
        assert result.exit_code == 0, result.output
        runs[batch] = [json.loads(x) for x in result.stdout.splitlines()]
    assert vllm_held == [False, False]
    assert [r["description"] for r in runs["8"]] == [r["description"] for r in runs["1"]]
    for a, b in zip(runs["8"], runs["1"]):
        assert np.abs(pixels(a["output"]) - pixels(b["output"])).max() <= 2

    gen = ActionFrameGenerator(str(tmp_path / "joint"), str(llava),
                               GenerateOptions(steps=2, size=64, greedy=True, max_new_tokens=6, progress=False))
    results = gen.generate(Image.open(frame), ["cut onion", "open fridge"])
    assert vllm_held[-1] is True and gen.vllm is not None
    assert [r.description for r in results] == [r["description"] for r in runs["8"]]


def test_python_api_is_importable_lazily_from_lego_core(model, frame, tmp_path):
    """`from lego_core import ActionFrameGenerator, LegoPipeline` works, and importing lego_core
    alone still imports no torch (the CLI stays light)."""
    code = ("import sys, lego_core, lego_core.diffusion; assert 'torch' not in sys.modules, 'torch imported'; "
            "from lego_core import ActionFrameGenerator, LegoPipeline; "
            "from lego_core.diffusion import LegoPipeline as P, ActionFrameGenerator as G; "
            "assert P is LegoPipeline and G is ActionFrameGenerator; print(LegoPipeline.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "LegoPipeline", proc.stderr

    from lego_core import ActionFrameGenerator, GenerateOptions

    gen = ActionFrameGenerator(str(model), options=GenerateOptions(steps=2, size=64, num_images=2, progress=False))
    results = gen.generate(Image.open(frame), ["cut onion", "open fridge"])
    assert [(r.prompt, r.description, r.seeds) for r in results] == [("cut onion", "cut onion", [0, 1]),
                                                                      ("open fridge", "open fridge", [0, 1])]
    assert all(im.size == (114, 64) for r in results for im in r.images)
    with pytest.raises(AttributeError):
        import lego_core

        lego_core.NoSuchThing
