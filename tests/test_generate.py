"""`lego generate` through the CLI on a saved tiny LEGO model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli, run_lego
from lego_core.diffusion.build import build_from_pretrained
from lego_core.diffusion.generate import load_image, output_paths
from lego_core.kit import make_tiny_instruct_pix2pix

FAST = ["--steps", "2", "--size", "64"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A saved LEGO model with description conditioning (no VLLM needed)."""
    root = tmp_path_factory.mktemp("model")
    base = make_tiny_instruct_pix2pix(root / "ip2p", sample_size=8)
    pipe = build_from_pretrained(base, conditioning="description", vllm=16)
    pipe.save_pretrained(root / "lego")
    return root / "lego"


@pytest.fixture(scope="module")
def joint_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    base = make_tiny_instruct_pix2pix(root / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="description+joint", vllm=16).save_pretrained(root / "lego")
    return root / "lego"


@pytest.fixture
def frame(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "frame.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_one_image_per_prompt_named_after_it_at_the_input_aspect(model, frame, tmp_path):
    out = tmp_path / "out"
    result = run_cli("generate", frame, "cut onion", "open fridge", "cut onion", "--model", model, "-o", out,
                     "--json", *FAST)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["cut onion", "open fridge", "cut onion"]
    names = [r["output"].split("/")[-1] for r in records]
    assert names == ["frame-cut-onion.png", "frame-open-fridge.png", "frame-cut-onion-2.png"]
    for r in records:
        assert Image.open(r["output"]).size == (114, 64)     # 160x90 -> short side 64, aspect kept
        assert r["description"] == r["prompt"] and r["steps"] == 2 and r["seed"] == 0


def test_same_seed_same_image_and_model_from_env(model, frame, tmp_path, monkeypatch):
    a = run_cli("generate", frame, "cut onion", "-o", tmp_path / "a.png", *FAST, "--model", model)
    monkeypatch.setenv("LEGO_MODEL", str(model))
    b = run_cli("generate", frame, "cut onion", "-o", tmp_path / "b.png", *FAST)
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    c = run_cli("generate", frame, "cut onion", "-o", tmp_path / "c.png", *FAST, "--seed", "1")
    assert c.exit_code == 0, c.output
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "c.png")))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "exif"])
def test_any_image_mode_works(mode, tmp_path):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    path = tmp_path / ("x.jpg" if mode in ("CMYK", "exif") else "x.png")
    if mode == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6                                     # rotated 90°: stored 60x40, shown 40x60
        rgb.save(path, exif=exif)
    else:
        (rgb.convert("RGBA") if mode == "RGBA" else rgb.convert(mode)).save(path)
    im = load_image(path)
    assert im.mode == "RGB"
    assert im.size == ((40, 60) if mode == "exif" else (60, 40))


def test_bad_inputs_exit_2_and_write_nothing(model, joint_model, frame, tmp_path, monkeypatch):
    monkeypatch.delenv("LEGO_MODEL", raising=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{}")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    cases = [
        ("generate", tmp_path / "missing.jpg", "cut onion", "--model", model),
        ("generate", tmp_path / "junk.jpg", "cut onion", "--model", model),
        ("generate", frame, "  ", "--model", model),
        ("generate", frame, "cut onion"),                                   # no model anywhere
        ("generate", frame, "cut onion", "--model", tmp_path / "broken"),   # a folder missing parts
        ("generate", frame, "cut onion", "--model", joint_model),           # needs --vllm
    ]
    for args in cases:
        result = run_cli(*args, "-o", tmp_path / "out", *FAST)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("lego: error:")
        assert not (tmp_path / "out").exists()
    proc = run_lego(*cases[-1], "-o", tmp_path / "out", *FAST)     # and as a real process
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--vllm" in proc.stderr


def test_batch_mode_names_outputs_by_key_and_resumes(model, frame, tmp_path):
    requests = tmp_path / "req.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"key": "ego4d-a-1", "image": str(frame), "prompt": "cut onion"},
        {"key": "ego4d-a-2", "image": str(tmp_path / "missing.jpg"), "prompt": "wash plate"},
        {"key": "ego4d-a-3", "image": str(frame), "prompt": "open fridge"},
    ]) + "\n")
    out = tmp_path / "gen"
    first = run_cli("generate", "--batch", requests, "--model", model, "-o", out, "--json", *FAST)
    assert first.exit_code == 0, first.output
    assert [json.loads(x)["key"] for x in first.stdout.splitlines()] == ["ego4d-a-1", "ego4d-a-3"]
    assert sorted(p.name for p in out.iterdir()) == ["ego4d-a-1.png", "ego4d-a-3.png"]
    assert "skipped 1" in first.stderr
    again = run_cli("generate", "--batch", requests, "--model", model, "-o", out, "--json", *FAST)
    assert again.exit_code == 0 and again.stdout == "" and "2 request(s) already had an image" in again.stderr


def test_output_paths():
    assert output_paths(["a"], "x.png", "f.jpg")[0][0].name == "x.png"
    assert output_paths(["a"], "o", "f.jpg", suffix=".jpg")[0][0].name == "f-a.jpg"
    assert [p.name for (p,) in output_paths(["Cut the onion!", "cut the onion"], "o", "f.jpg")] == \
        ["f-cut-the-onion.png", "f-cut-the-onion-2.png"]


def test_with_vllm_the_description_and_embeddings_condition_the_model(frame, tmp_path):
    """--vllm: the tiny LLaVA describes the action; its H_i/H_t feed a joint-conditioned model."""
    from lego_core.kit import make_tiny_llava
    from lego_core.vllm.load import embedding_shape, load_config

    llava = make_tiny_llava(tmp_path / "llava")
    width = embedding_shape(load_config(llava))[1]
    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="description+joint", vllm=llava).save_pretrained(tmp_path / "joint")
    result = run_cli("generate", frame, "cut onion", "--model", tmp_path / "joint", "--vllm", llava, "--greedy",
                     "--max-new-tokens", "6", "-o", tmp_path / "out.png", "--json", *FAST)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    assert record["description"] and record["description"] != "cut onion"
    assert record["question"] == "How does the person properly cut onion that is displayed in the video frame?"
    asked = run_cli("generate", frame, "cut onion", "--model", tmp_path / "joint", "--vllm", llava, "--greedy",
                    "--max-new-tokens", "2", "-o", tmp_path / "q.png", "--json", "--question",
                    "What does {} look like?", *FAST)
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout.splitlines()[-1])["question"] == "What does cut onion look like?"
    assert Image.open(tmp_path / "out.png").size == (114, 64)
    text = run_cli("generate", frame, "cut onion", "--model", tmp_path / "joint", "--vllm", llava, "--greedy",
                   "--max-new-tokens", "6", "-o", tmp_path / "out2.png", *FAST)
    assert text.stdout.splitlines()[1].strip() == record["description"].strip()   # printed under the path
    assert width == 64
    # A "label" model ignores the VLLM's description: the same image as without --vllm.
    build_from_pretrained(base, conditioning="label", vllm=llava).save_pretrained(tmp_path / "label")
    for out, extra in (("l1.png", ("--vllm", llava, "--greedy", "--max-new-tokens", "6")), ("l2.png", ())):
        assert run_cli("generate", frame, "cut onion", "--model", tmp_path / "label", *extra,
                       "-o", tmp_path / out, *FAST).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l1.png")), np.asarray(Image.open(tmp_path / "l2.png")))


def test_authors_postprocess_stretches_each_image_over_all_channels_and_truncates():
    """(x − min) / (max − min) · 255 with min and max over the whole image, not per channel, then
    uint8 truncation: what the authors' metrics/inference.py scored."""
    from lego_core.diffusion.generate import authors_postprocess

    x = torch.zeros(3, 2, 2)
    x[0, 0, 0], x[2, 1, 1], x[1, 0, 1] = -1.5, 1.5, 1.49          # min in R, max in B
    out = np.asarray(authors_postprocess(x, 2, 2))
    assert out[0, 0, 0] == 0 and out[1, 1, 2] == 255
    assert out[0, 1, 1] == 254                                   # 254.15 truncated, not rounded
    assert out[1, 0, 1] == 127 and out[0, 0, 1] == 127           # 127.5 -> 127; G not stretched on its own


def test_authors_postprocess_writes_their_jpegs(model, frame, tmp_path):
    import io

    from lego_core.diffusion.build import load_pipeline
    from lego_core.diffusion.generate import authors_postprocess

    result = run_cli("generate", frame, "cut onion", "--model", model, "-o", tmp_path / "out", "--authors-postprocess",
                     *FAST)
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "frame-cut-onion.jpg"
    assert Image.open(path).format == "JPEG" and Image.open(path).size == (114, 64)
    # the decoded image unclamped, resized, stretched, truncated, JPEG at PIL's default quality
    pipe = load_pipeline(str(model))
    square = load_image(frame).resize((64, 64), Image.Resampling.BICUBIC)
    raw = pipe(["cut onion"], [square], num_inference_steps=2, generator=[torch.Generator().manual_seed(0)],
               output_type="raw").images[0]
    want = authors_postprocess(raw, 114, 64)
    buf = io.BytesIO()
    want.save(buf, format="JPEG")
    assert path.read_bytes() == buf.getvalue()
    arr = np.asarray(want)
    assert arr.min() == 0 and arr.max() == 255
    # a PNG name with it is one line, exit 2, before any model is loaded
    bad = run_cli("generate", frame, "cut onion", "--model", model, "-o", tmp_path / "x.png", "--authors-postprocess",
                  *FAST)
    assert bad.exit_code == 2 and "--authors-postprocess" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_bad_steps_or_size_exit_2(model, frame, tmp_path):
    for flag, value in (("--steps", "0"), ("--size", "4")):
        result = run_cli("generate", frame, "cut onion", "--model", model, "-o", tmp_path / "out", *FAST, flag, value)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and flag in result.stderr
        assert not (tmp_path / "out").exists()


def test_a_label_model_is_prompted_with_labels(tmp_path, monkeypatch):
    """What each model was trained on: a "label" model gets the label even where the shards (or a
    VLLM) have a description; a "description" model gets the description (lego evaluate --model)."""
    from lego_core.data.shards import ShardWriter, iter_samples
    from lego_core.diffusion.pipeline import LegoPipeline
    from lego_core.diffusion.generate_shards import generate_folder

    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    for conditioning in ("label", "description"):
        build_from_pretrained(base, conditioning=conditioning, vllm=16).save_pretrained(tmp_path / conditioning)
    samples = [s for _, s in zip(range(2), iter_samples([str(REPO / "shards" / "ego4d-000000.tar")]))]
    with ShardWriter(str(tmp_path / "d-%06d.tar")) as w:
        for s in samples:
            w.write({**{k: v for k, v in s.items() if not k.startswith("__url")},
                     "enriched.txt": b"Hold the plate with the left hand and rinse it."})
    labels = [json.loads(s["meta.json"])["label"] for s in samples]
    seen = []
    encode = LegoPipeline.encode_text
    monkeypatch.setattr(LegoPipeline, "encode_text",
                        lambda self, prompts: (seen.append(list(prompts)), encode(self, prompts))[1])
    for conditioning, want in (("label", labels),
                               ("description", ["Hold the plate with the left hand and rinse it."] * 2)):
        seen.clear()
        generate_folder([str(tmp_path / "d-000000.tar")], str(tmp_path / conditioning),
                        str(tmp_path / f"gen-{conditioning}"), steps=1, size=64)
        assert seen[0] == want
