"""`lego evaluate` end to end through the CLI: generated folders against the bundled shards with
tiny random models, the output files, the several-sets table, and the errors."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, run_lego

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = os.path.join(REPO, "shards")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models + two generated folders keyed like the bundled shards (5 of their 22 samples,
    one extra key, a grayscale, an RGBA and a half-size image among them)."""
    import torch
    import torchvision

    from lego_core.data.shards import iter_samples
    from lego_core.kit.metric_models import make_tiny_blip, make_tiny_clip, make_tiny_fid_features

    d = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), d / "squeeze.pth")
    make_tiny_clip(d / "clip")
    make_tiny_blip(d / "blip")
    make_tiny_fid_features(d / "fid")
    samples = list(iter_samples(SHARDS))[:5]
    rng = np.random.RandomState(0)
    for name, noise in (("noisy", 10), ("noisier", 60)):
        g = d / name
        g.mkdir()
        for i, s in enumerate(samples):
            im = np.asarray(Image.open(io.BytesIO(s["target.jpg"])).convert("RGB"), np.float64)
            im = Image.fromarray(np.clip(im + rng.normal(0, noise, im.shape), 0, 255).astype(np.uint8))
            if i == 1:
                im = im.convert("L")
            elif i == 2:
                im = im.convert("RGBA")
            elif i == 3:
                im = im.resize((im.width // 2, im.height // 2))
            im.save(g / f"{s['__key__']}.png")
        _ = Image.new("RGB", (8, 8)).save(g / "not-in-the-shards.png")
    keys = [s["__key__"] for s in samples]
    common = ["--lpips-weights", str(d / "squeeze.pth"), "--fid-model", str(d / "fid"), "--clip-model", str(d / "clip"),
              "--blip-model", f"b={d / 'blip'}", "--batch-size", "3"]
    return {"dir": d, "keys": keys, "common": common}


def test_evaluate_folder_against_shards_all_metrics(env):
    d = env["dir"]
    out = d / "out-one"
    r = run_cli("-q", "evaluate", "--generated", d / "noisy", "--reference", SHARDS, "-o", out, *env["common"])
    assert r.exit_code == 0, r.output
    assert "psnr" in r.output and str(out / "report.html") in r.output
    assert "1 generated without reference" in r.output and "17 references without generated image" in r.output
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["n"] == 5 and meta["resized_to_reference"] == 1
    assert meta["matching"]["only_generated"] == {"count": 1, "examples": ["not-in-the-shards"]}
    assert meta["matching"]["only_reference"]["count"] == 17
    for m in ("psnr", "lpips", "clip", "blip_b"):
        assert set(meta["metrics"][m]) == {"mean", "std", "n", "higher_is_better"} and meta["metrics"][m]["n"] == 5
    assert set(meta["metrics"]["fid"]) == {"value", "n", "higher_is_better"} and meta["metrics"]["fid"]["n"] == 5
    assert meta["settings"]["lpips"]["input_range"] == "[-1, 1]"
    assert meta["config"]["metrics"] == ["psnr", "lpips", "fid", "clip", "blip"]
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [row["key"] for row in rows] == sorted(env["keys"])
    assert {"label", "description", "psnr", "lpips", "clip", "blip_b", "blip_b_caption"} <= set(rows[0])
    # The CSV's per-image values give the JSON's mean.
    assert np.mean([float(row["psnr"]) for row in rows]) == pytest.approx(meta["metrics"]["psnr"]["mean"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 15 and "Best by lpips" in html and "Worst by lpips" in html
    assert "src=\"http" not in html  # self-contained
    assert rows[0]["label"] and rows[0]["label"] in html


def test_psnr_of_resized_and_gray_images_matches_numpy(env):
    """Through the CLI: the generated image is resized (bicubic) to the reference; grayscale is RGB."""
    from lego_core.data.shards import iter_samples

    d = env["dir"]
    r = run_cli("-q", "evaluate", "-g", d / "noisy", "-r", SHARDS, "--metrics", "psnr", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    got = summary["table"]["rows"][0]
    targets = {s["__key__"]: s["target.jpg"] for s in iter_samples(SHARDS)}
    vals = []
    for k in env["keys"]:
        ref = Image.open(io.BytesIO(targets[k])).convert("RGB")
        gen = Image.open(d / "noisy" / f"{k}.png").convert("RGB").resize(ref.size, Image.BICUBIC)
        mse = np.mean((np.asarray(gen, np.float64) / 255 - np.asarray(ref, np.float64) / 255) ** 2)
        vals.append(10 * np.log10(1 / mse))
    assert summary["table"]["columns"] == ["set", "n", "psnr"]
    assert got[2] == pytest.approx(np.mean(vals), rel=1e-9)


def test_several_generated_sets_make_one_table(env):
    d = env["dir"]
    out = d / "out-two"
    r = run_cli("-q", "evaluate", "-g", f"a={d / 'noisy'}", "-g", f"b={d / 'noisier'}", "-r", SHARDS, "-o", out,
                "--metrics", "psnr,lpips,fid", *env["common"], "--json")
    assert r.exit_code == 0, r.output
    table = json.loads(r.output)["table"]
    assert table["columns"] == ["set", "n", "psnr", "lpips", "fid"]
    (a, b) = table["rows"]
    assert a[0] == "a" and b[0] == "b" and a[2] > b[2] and a[3] < b[3] and a[4] < b[4]  # less noise is better
    for f in ("metrics.json", "table.csv", "table.md", "report.html", "a/metrics.json", "b/report.html",
              "b/samples.csv"):
        assert (out / f).is_file(), f
    assert "a/report.html" in (out / "report.html").read_text()
    # The reference statistics reused for set b give the same FID as evaluating b alone.
    alone = run_cli("-q", "evaluate", "-g", d / "noisier", "-r", SHARDS, "--metrics", "fid", "--fid-model", d / "fid",
                    "--json")
    assert json.loads(alone.output)["table"]["rows"][0][2] == pytest.approx(b[4], rel=1e-6)


def test_lpips_authors_range_flag(env):
    d = env["dir"]
    args = ("-q", "evaluate", "-g", d / "noisy", "-r", SHARDS, "--metrics", "lpips", "--lpips-weights",
            d / "squeeze.pth", "--json")
    ours = json.loads(run_cli(*args).output)
    theirs = json.loads(run_cli(*args, "--lpips-authors-range").output)
    assert theirs["sets"][0]["settings"]["lpips"]["input_range"].startswith("[0, 1]")
    assert ours["table"]["rows"][0][2] != pytest.approx(theirs["table"]["rows"][0][2])


def test_errors_are_one_line_exit_2(env, tmp_path):
    d = env["dir"]
    (tmp_path / "g").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "g" / "zzz.png")
    r = run_lego("evaluate", "-g", tmp_path / "g", "-r", SHARDS, "--metrics", "psnr")
    assert r.returncode == 2 and r.stderr.startswith("lego: error: no keys in common") and r.stderr.count("\n") == 1
    r = run_lego("evaluate", "-g", d / "noisy", "-r", SHARDS, "--metrics", "lpips", env={"TORCH_HOME": str(tmp_path)})
    assert r.returncode == 2 and "squeezenet1_1-b8a52dc0.pth" in r.stderr and "--lpips-weights" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = run_cli("evaluate", "-g", d / "noisy", "-r", SHARDS, "--metrics", "psnr,ssim")
    assert r.exit_code == 2 and "unknown metric 'ssim'" in r.output
    r = run_cli("evaluate", "-g", d / "noisy")
    assert r.exit_code == 2 and "--reference" in r.output
    r = run_cli("evaluate", SHARDS, "--model", d / "m", "-g", d / "noisy")
    assert r.exit_code == 2 and "not --generated" in r.output
    r = run_cli("evaluate", "-g", d / "noisy", "-r", tmp_path / "missing", "--metrics", "psnr")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_blip_needs_descriptions_from_folder_reference(env, tmp_path):
    d = env["dir"]
    ref = tmp_path / "ref"
    ref.mkdir()
    for k in env["keys"][:3]:
        Image.open(d / "noisy" / f"{k}.png").convert("RGB").save(ref / f"{k}.jpg")
    args = ("-q", "evaluate", "-g", d / "noisier", "-r", ref, "--clip-model", d / "clip", "--blip-model",
            f"b={d / 'blip'}")
    r = run_cli(*args, "--metrics", "psnr,blip")
    assert r.exit_code == 2 and "needs a description" in r.output
    (ref / f"{env['keys'][0]}.txt").write_text("the person cuts the onion")
    r = run_cli(*args, "--metrics", "psnr,blip", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["sets"][0]["metrics"]
    assert m["blip_b"]["n"] == 1 and m["psnr"]["n"] == 3


def test_help_has_examples():
    r = run_cli("evaluate", "--help")
    assert r.exit_code == 0 and "Examples:" in r.output and "--lpips-authors-range" in r.output
    assert "evaluate" in run_cli("--help").output


def test_undecodable_image_is_skipped_and_counted(env, tmp_path):
    d = env["dir"]
    g = tmp_path / "g"
    g.mkdir()
    for k in env["keys"][:3]:
        (g / f"{k}.png").write_bytes((d / "noisy" / f"{k}.png").read_bytes())
    (g / f"{env['keys'][3]}.png").write_bytes((d / "noisy" / f"{env['keys'][3]}.png").read_bytes()[:100])  # truncated
    r = run_cli("-q", "evaluate", "-g", g, "-r", SHARDS, "--metrics", "psnr", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["sets"][0]
    assert s["n"] == 3 and s["skipped"]["total"] == 1 and s["skipped"]["examples"]
    assert list(s["skipped"]["reasons"]) == ["generated image does not decode (OSError)"]


def test_evaluate_from_python_reports_what_the_command_prints(env, tmp_path):
    """`EvalResult.lines()` is the command's text summary: the table, the keys on one side only,
    the skipped images and the files written."""
    from lego_core.metrics.runner import EvalConfig, evaluate

    d = env["dir"]
    g = tmp_path / "g"
    g.mkdir()
    for k in env["keys"][:3]:
        (g / f"{k}.png").write_bytes((d / "noisy" / f"{k}.png").read_bytes())
    (g / f"{env['keys'][3]}.png").write_bytes((d / "noisy" / f"{env['keys'][3]}.png").read_bytes()[:100])
    cli = run_cli("-q", "evaluate", "-g", f"g={g}", "-r", SHARDS, "--metrics", "psnr", "-o", tmp_path / "cli")
    assert cli.exit_code == 0, cli.output
    result = evaluate({"g": str(g)}, SHARDS, EvalConfig(metrics=("psnr",), metrics_explicit=True),
                      out=str(tmp_path / "py"))
    text = "\n".join(result.lines())
    assert result.outputs and text.replace(str(tmp_path / "py"), str(tmp_path / "cli")) + "\n" == cli.stdout
    assert "references without generated image" in text and "1 skipped" in text and "psnr" in text


def test_generated_shards_never_score_a_sample_against_its_own_target(env, tmp_path):
    """Generated shards keep the copied target.jpg; a sample whose generation failed (no generated.png)
    is missing on the generated side, not compared with itself (PSNR 100)."""
    from lego_core.data.shards import ShardWriter, iter_samples

    samples = [s for s in iter_samples(SHARDS) if s["__key__"] in env["keys"][:3]]
    failed = samples[2]["__key__"]
    with ShardWriter(str(tmp_path / "gen-%06d.tar")) as w:
        for s in samples:
            out = {k: v for k, v in s.items() if k in ("__key__", "target.jpg", "input.jpg", "meta.json")}
            if s["__key__"] != failed:
                out["generated.png"] = (env["dir"] / "noisy" / f"{s['__key__']}.png").read_bytes()
            w.write(out)
    r = run_cli("-q", "evaluate", "-g", tmp_path / "gen-000000.tar", "-r", SHARDS, "--metrics", "psnr", "--json",
                "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["sets"][0]
    assert s["n"] == 2 and s["metrics"]["psnr"]["mean"] < 50
    assert s["matching"]["only_reference"]["count"] == 22 - 2      # the failed sample among them
    rows = list(csv.DictReader((tmp_path / "out" / "samples.csv").open()))
    assert failed not in [row["key"] for row in rows] and len(rows) == 2
    # Asked for explicitly, target.jpg is still read (all three samples, each equal to its reference).
    r = run_cli("-q", "evaluate", "-g", tmp_path / "gen-000000.tar", "-r", SHARDS, "--metrics", "psnr", "--json",
                "--generated-field", "target.jpg")
    assert json.loads(r.output)["sets"][0]["n"] == 3


def test_generate_first_plumbing_with_a_stand_in_generator(env, tmp_path):
    """evaluate_models: a generator fills OUT/NAME/generated/{key}.png, then the same evaluation runs;
    one table row per model. (The real generator is LegoPipeline; here a stand-in copies images.)"""
    import shutil

    from lego_core.evaluation import evaluate_models
    from lego_core.metrics.runner import EvalConfig

    def fake_generate(shards, model, folder, **kw):
        os.makedirs(folder, exist_ok=True)
        for k in env["keys"]:
            shutil.copy(env["dir"] / model / f"{k}.png", os.path.join(folder, f"{k}.png"))
        return folder

    res = evaluate_models([SHARDS], ["a=noisy", "b=noisier"], EvalConfig(metrics=("psnr",)), out=str(tmp_path),
                          generate=fake_generate)
    assert [row[0] for row in res.table()[1]] == ["a", "b"] and (tmp_path / "a" / "generated").is_dir()
    assert (tmp_path / "b" / "metrics.json").is_file() and (tmp_path / "table.csv").is_file()
    r = run_cli("evaluate", SHARDS, "--model", tmp_path / "some-model", "--metrics", "psnr")
    assert r.exit_code == 2 and "model folder not found" in r.stderr


def test_generate_first_with_real_lego_models_gives_one_row_per_model(tmp_path):
    """The paper's ablation shape: two LEGO models (labels / descriptions), generated then scored."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.kit import make_tiny_instruct_pix2pix

    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    for conditioning in ("label", "description"):
        build_from_pretrained(base, conditioning=conditioning, vllm=16).save_pretrained(tmp_path / conditioning)
    r = run_cli("evaluate", os.path.join(SHARDS, "ego4d-000000.tar"), "--model", f"labels={tmp_path / 'label'}",
                "--model", f"descriptions={tmp_path / 'description'}", "--metrics", "psnr", "--steps", "2",
                "--size", "64", "-o", tmp_path / "eval", "--json")
    assert r.exit_code == 0, r.output
    for name in ("labels", "descriptions"):
        generated = sorted(f for f in os.listdir(tmp_path / "eval" / name / "generated") if f != "provenance.json")
        assert len(generated) == 6 and all(g.startswith("ego4d-") and g.endswith(".png") for g in generated)
        metrics = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert metrics["metrics"]["psnr"]["n"] == 6 if "metrics" in metrics else True
    assert (tmp_path / "eval" / "table.csv").read_text().count("\n") >= 3


def test_generate_first_authors_postprocess_writes_jpegs_and_is_recorded(tmp_path):
    """--authors-postprocess in generate-first mode: the images are the authors' JPEGs, the
    provenance says so, and switching back regenerates PNGs (no JPEG left to be scored)."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.generate import GenerateOptions
    from lego_core.kit import make_tiny_instruct_pix2pix
    from lego_core.diffusion.generate_shards import provenance

    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="label", vllm=16).save_pretrained(tmp_path / "m")
    generated = tmp_path / "eval" / "generated"

    def run(*extra):
        r = run_cli("-q", "evaluate", os.path.join(SHARDS, "ego4d-000000.tar"), "--model", tmp_path / "m",
                    "--metrics", "psnr", "--steps", "2", "--size", "16", "-o", tmp_path / "eval", "--json", *extra)
        assert r.exit_code == 0, r.output
        return sorted(f for f in os.listdir(generated) if f != "provenance.json")

    files = run("--authors-postprocess")
    assert len(files) == 6 and all(f.endswith(".jpg") for f in files)
    assert "the authors'" in json.loads((generated / "provenance.json").read_text())["post_processing"]
    files = run()
    assert len(files) == 6 and all(f.endswith(".png") for f in files)
    # the VLLM's question is part of the record too (when a VLLM asks it)
    ours = provenance(str(tmp_path / "m"), str(tmp_path / "m"), GenerateOptions(question="What is {}?"))
    assert ours["question"] == "What is {action}?"
    assert provenance(str(tmp_path / "m"), str(tmp_path / "m"), GenerateOptions())["question"].startswith(
        "How does the person properly")


def test_psnr_changed_end_to_end_against_numpy(env, tmp_path):
    """--metrics psnr_changed: the generated frame's and the input frame's PSNR over the changed and
    unchanged regions reach metrics.json, samples.csv, the table and report.html, and equal numpy's
    (the half-size generated image resized bicubic to the ground truth)."""
    from lego_core.data.shards import iter_samples

    d = env["dir"]
    out = tmp_path / "out"
    r = run_cli("-q", "evaluate", "-g", d / "noisy", "-r", SHARDS, "--metrics", "psnr,psnr_changed", "-o", out)
    assert r.exit_code == 0, r.output
    assert "psnr_changed ↑" in r.output and "input_psnr_changed ↑" in r.output
    assert "generated beats input on" in r.output
    meta = json.loads((out / "metrics.json").read_text())
    m = meta["metrics"]
    for c in ("psnr_changed", "psnr_unchanged", "input_psnr_changed", "input_psnr_unchanged"):
        assert m[c]["n"] == 5 and m[c]["excluded"] == 0 and m[c]["no_input"] == 0, c
    assert m["psnr_changed_beats_input"]["n"] == 5
    rows = {row["key"]: row for row in csv.DictReader((out / "samples.csv").open())}
    samples = {s["__key__"]: s for s in iter_samples(SHARDS)}
    wins = []
    for k in env["keys"]:
        y = Image.open(io.BytesIO(samples[k]["target.jpg"])).convert("RGB")
        x = np.asarray(Image.open(io.BytesIO(samples[k]["input.jpg"])).convert("RGB"), np.float64) / 255
        g = np.asarray(Image.open(d / "noisy" / f"{k}.png").convert("RGB").resize(y.size, Image.BICUBIC),
                       np.float64) / 255
        y = np.asarray(y, np.float64) / 255
        changed = np.abs(y - x).mean(-1) > 0.1
        want = {"psnr_changed": 10 * np.log10(1 / np.mean((g - y)[changed] ** 2)),
                "psnr_unchanged": 10 * np.log10(1 / np.mean((g - y)[~changed] ** 2)),
                "input_psnr_changed": 10 * np.log10(1 / np.mean((x - y)[changed] ** 2))}
        for c, v in want.items():
            assert float(rows[k][c]) == pytest.approx(v, rel=1e-9), (k, c)
        wins.append(want["psnr_changed"] > want["input_psnr_changed"])
    assert m["psnr_changed_beats_input"]["value"] == pytest.approx(np.mean(wins))
    assert np.mean([float(rows[k]["psnr_changed"]) for k in rows]) == pytest.approx(m["psnr_changed"]["mean"])
    html = (out / "report.html").read_text()
    assert "input_psnr_changed" in html and "generated beats input on" in html
    # A folder reference has no input frames: asked for by name, that is one line and exit 2.
    ref = tmp_path / "ref"
    ref.mkdir()
    Image.open(d / "noisy" / f"{env['keys'][0]}.png").convert("RGB").save(ref / f"{env['keys'][0]}.jpg")
    r = run_cli("evaluate", "-g", d / "noisier", "-r", ref, "--metrics", "psnr_changed")
    assert r.exit_code == 2 and "psnr_changed needs the input frame" in r.output
