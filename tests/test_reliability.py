"""Issue #22, "nothing lost, nothing wrong, no one in": each defect the reliability review
reproduced, through the real CLI, plus one table of bad inputs (exit 2, one line, no traceback,
nothing lost) so the next defect of this kind is one row away from being caught."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from lego_core.data import shards as SH

EPIC = REPO / "shards" / "epic-000000.tar"       # 16 samples
EGO4D = REPO / "shards" / "ego4d-000000.tar"     # 6 samples


def keys_in(path) -> list[str]:
    return [s["__key__"] for s in SH.iter_tar(str(path))]


def bundled_keys() -> list[str]:
    return keys_in(EPIC)


def one_line_error(r, code: int = 2) -> str:
    """The contract for bad input: exit code, one line on stderr, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output)
    err = r.stderr.strip()
    assert "Traceback" not in r.output and len(err.splitlines()) == 1, err
    return err


# --- 1. a rerun onto a single-file --out never drops written samples --------------------------------


def test_rerun_onto_single_file_out_is_refused_and_keeps_the_samples(tmp_path):
    out = tmp_path / "all.tar"
    r = run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "3")
    assert r.exit_code == 0, r.output
    first = keys_in(out)
    assert first == bundled_keys()[:3]
    r = run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "6")
    err = one_line_error(r)
    assert "%06d" in err and "--overwrite" in err
    assert keys_in(out) == first                      # nothing dropped
    r = run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "6", "--overwrite")
    assert r.exit_code == 0 and keys_in(out) == bundled_keys()[:6]


def test_rerun_onto_a_pattern_still_continues(tmp_path):
    out = tmp_path / "cur-%06d.tar"
    assert run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "3").exit_code == 0
    assert run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "6").exit_code == 0
    got = [k for p in SH.finished_shards(str(out)) for k in keys_in(p)]
    assert got == bundled_keys()[:6]


# --- 3. file names are never commands ---------------------------------------------------------------


def test_a_shard_named_like_a_pipe_url_is_read_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data-000.tar").write_bytes(EPIC.read_bytes())
    evil = "pipe:touch PWNED;cat data-000.tar;.tar"
    (tmp_path / evil).write_bytes(EGO4D.read_bytes())
    for spec in ("*.tar", "."):                       # a glob and a folder
        r = run_cli("inspect", spec, "--json")
        assert not (tmp_path / "PWNED").exists(), spec
        assert json.loads(r.output)["samples"] == 16 + 6   # the odd name was read as the file it is
    # the evaluate reference reader takes the same names as files
    from lego_core.metrics.matching import ShardSource

    src = ShardSource(["*.tar"], None, "reference")
    assert not (tmp_path / "PWNED").exists() and len(src.keys()) == 22
    src.close()


# --- 4. inspect --strict fails on a shard that is not a complete tar --------------------------------


@pytest.mark.parametrize("damage", ["random", "cut_mid_member", "cut_at_member_boundary"])
def test_inspect_strict_fails_on_random_or_truncated_tar(tmp_path, damage):
    data = EPIC.read_bytes()
    if damage == "random":
        data = os.urandom(20_000)
    elif damage == "cut_mid_member":
        data = data[: len(data) // 2 + 100]
    else:   # a whole number of members, no end-of-archive blocks: tarfile alone reads it happily
        with tarfile.open(EPIC) as t:
            members = t.getmembers()
        data = data[: members[9].offset]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data)
    r = run_cli("inspect", bad, "--strict")
    err = one_line_error(r, 1)
    assert "truncated or corrupt" in err


# --- 5. our own checkpoint files load weights-only ---------------------------------------------------


class _Planted:
    def __reduce__(self):
        return (open, (os.environ["LEGO_PLANTED"], "w"))


def test_rng_and_ema_files_are_never_unpickled(tmp_path, monkeypatch, caplog):
    import torch

    from lego_core.engine.checkpoint import load_trusted_tensors, rng_state, set_rng_state

    marker = tmp_path / "ran"
    monkeypatch.setenv("LEGO_PLANTED", str(marker))
    planted = tmp_path / "rng-rank0.pt"
    torch.save({"python": _Planted()}, planted)
    assert load_trusted_tensors(planted, "the RNG state") is None
    assert not marker.exists()
    assert "needs unpickling" in caplog.text
    # what we write ourselves round-trips weights-only
    ours = tmp_path / "ours.pt"
    torch.manual_seed(3)
    torch.save(rng_state(), ours)
    want = torch.rand(3)
    torch.manual_seed(99)
    set_rng_state(load_trusted_tensors(ours, "the RNG state"))
    assert torch.equal(torch.rand(3), want)


def test_resume_help_says_a_checkpoint_is_trusted_like_code():
    for cmd in ("train", "tune-vllm"):
        assert "unpickles" in run_cli(cmd, "--help").output


# --- 7. one huge member cannot fill the memory ------------------------------------------------------


def _gz_with_huge_member(path: Path, mb: int) -> None:
    good = list(SH.iter_tar(str(EPIC)))[:2]
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for i, s in enumerate(good):
            for name in ("input.jpg", "meta.json", "target.jpg"):
                data = s[name]
                if i == 1 and name == "target.jpg":
                    data = b"\0" * (mb * 1_000_000)
                info = tarfile.TarInfo(f"{s['__key__']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_member_over_the_limit_is_skipped_with_its_reason(tmp_path):
    shard = tmp_path / "bomb.tar.gz"
    _gz_with_huge_member(shard, 3)
    assert shard.stat().st_size < 200_000
    r = run_cli("inspect", shard, "--json", "--max-member-mb", "2")
    report = json.loads(r.output)
    assert report["samples"] == 2 and report["valid"] == 1
    [problem] = [p for p in report["problems"] if "member limit" in p]
    assert "target.jpg is 3 MB" in problem and "--max-member-mb" in problem
    assert run_cli("inspect", shard, "--json").exit_code == 0          # 3 MB is fine under the 64 MB default
    stats = SH.SkipStats()
    got = [s["__key__"] for s in SH.iter_samples([str(shard)], stats=stats, max_member_mb=2)]
    assert len(got) == 1 and stats.counts == {"member over the size limit": 1}


# --- 7/9. evaluate: unreadable and truncated shards are reported, odd labels do not crash ---------


def _rewrite(src: Path, dest: Path, *, keep=None, edit=None) -> None:
    with SH.ShardWriter(str(dest)) as w:
        for s in SH.iter_tar(str(src)):
            if keep is None or s["__key__"] in keep:
                w.write(edit(s) if edit else s)


def test_evaluate_reports_truncated_generated_shard_and_survives_odd_labels(tmp_path):
    keys = bundled_keys()
    gen = tmp_path / "gen"
    gen.mkdir()
    _rewrite(EPIC, gen / "g-000000.tar", keep=set(keys[:8]))
    _rewrite(EPIC, gen / "g-000001.tar", keep=set(keys[8:]))
    with tarfile.open(gen / "g-000001.tar") as t:
        cut = t.getmembers()[6].offset              # two whole samples, then nothing: no end blocks
    (gen / "g-000001.tar").write_bytes((gen / "g-000001.tar").read_bytes()[:cut])

    def odd_label(s):
        meta = json.loads(s["meta.json"])
        meta["label"] = 7
        return {**s, "meta.json": meta}

    ref = tmp_path / "ref.tar"
    _rewrite(EPIC, ref, edit=odd_label)
    r = run_cli("evaluate", "--generated", gen, "--reference", ref, "--metrics", "psnr", "-o", tmp_path / "ev",
                "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    skipped = summary["sets"][0]["skipped"] if "sets" in summary else summary["skipped"]
    assert skipped["reasons"].get(SH.CORRUPT) == 1, skipped
    assert (tmp_path / "ev" / "report.html").is_file()


# --- 6. a rerun with settings that change what a sample contains is refused -----------------------


def test_extract_rerun_with_another_size_is_refused_but_limit_may_change(tmp_path):
    from lego_core.kit.synthetic_sample import make_sample

    s = make_sample(tmp_path / "src", epic_seconds=6.0, ego4d_seconds=4.0, width=192, height=108)
    root = Path(s["epic_csv"]).parent
    args = ["extract", "--dataset", "epic-kitchens", "--annotations", root / "EPIC_100_sample.csv",
            "--videos", root / "videos", "--out", tmp_path / "out" / "epic-%06d.tar", "--workers", "1", "--size", "64"]
    assert run_cli("-q", *args, "--limit", "2").exit_code == 0
    before = sorted((tmp_path / "out").glob("epic-*.tar"))
    err = one_line_error(run_cli("-q", *args[:-1], "96"))
    assert "size: then 64, now 96" in err and "--overwrite" in err
    assert sorted((tmp_path / "out").glob("epic-*.tar")) == before
    r = run_cli("-q", *args, "--limit", "4", "--workers", "2")          # how much / how fast: fine
    assert r.exit_code == 0, r.output
    assert run_cli("-q", *args[:-1], "96", "--overwrite").exit_code == 0


def test_curate_rerun_with_another_temperature_is_refused(tmp_path, monkeypatch):
    from curate_server import FakeLLM

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-rerun-0000000000")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeLLM() as llm:
        args = ["-q", "curate", EPIC, "--out", tmp_path / "cur-%06d.tar", "--base-url", llm.url, "--llm", "fake"]
        assert run_cli(*args, "--limit", "2").exit_code == 0
        llm.reset_counts()
        err = one_line_error(run_cli(*args, "--limit", "4", "--temperature", "0.2"))
        assert "temperature: then 0.7, now 0.2" in err
        assert llm.total == 0
        assert run_cli(*args, "--limit", "4", "--concurrency", "2").exit_code == 0


@pytest.fixture(scope="module")
def two_llavas(tmp_path_factory, tiny_llava):
    from lego_core.kit import make_tiny_llava

    d = tmp_path_factory.mktemp("llava")
    return tiny_llava, make_tiny_llava(d / "b", seed=1)


def test_enrich_rerun_with_another_vllm_or_decoding_is_refused(tmp_path, two_llavas):
    a, b = two_llavas
    out = tmp_path / "e-%06d.tar"
    fast = ["--max-new-tokens", "3", "--greedy", "--max-text-tokens", "2"]
    assert run_cli("-q", "enrich", EGO4D, "--vllm", a, "--out", out, *fast).exit_code == 0
    written = (tmp_path / "e-000000.tar").read_bytes()
    for other, says in ((["--vllm", b, *fast], "vllm"),
                        (["--vllm", a, "--max-new-tokens", "3", "--max-text-tokens", "2"],
                         "greedy: then True, now False"),
                        (["--vllm", a, *fast, "--question", "What is {}?"],
                         "question: then 'How does the person properly {action} that is displayed in the video "
                         "frame?', now 'What is {action}?'")):
        err = one_line_error(run_cli("-q", "enrich", EGO4D, "--out", out, *other))
        assert says in err, err
    assert (tmp_path / "e-000000.tar").read_bytes() == written
    moved = tmp_path / "moved"
    os.rename(a, moved)                                  # the same model elsewhere is the same model
    try:
        assert run_cli("-q", "enrich", EGO4D, "--vllm", moved, "--out", out, *fast, "--batch-size", "2").exit_code == 0
    finally:
        os.rename(moved, a)


# --- 8. the API key never travels in clear text, credentials are never written -----------------------


def test_key_is_not_sent_over_plain_http_to_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-insecure-000000000")
    r = run_cli("-q", "curate", EPIC, "--out", tmp_path / "c-%06d.tar", "--base-url", "http://10.0.0.7:8000/v1")
    err = one_line_error(r)
    assert "--allow-insecure-http" in err and "https" in err
    assert not list(tmp_path.glob("c-*.tar"))
    from lego_core.curate.client import NO_KEY, resolve_api_key

    # a keyless server on the local network still works; loopback and https are always fine
    assert resolve_api_key("http://10.0.0.7:8000/v1", {}) == NO_KEY
    assert resolve_api_key("http://10.0.0.7/v1", {"OPENAI_API_KEY": "k"}, allow_insecure_http=True) == "k"
    for ok in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://[::1]:80/v1", "https://10.0.0.7/v1"):
        assert resolve_api_key(ok, {"OPENAI_API_KEY": "k"}) == "k"


def test_credentials_in_the_base_url_are_never_written(tmp_path, monkeypatch):
    from curate_server import FakeLLM

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeLLM() as llm:
        url = llm.url.replace("http://", "http://alice:hunter2pass@")
        r = run_cli("curate", EPIC, "--out", tmp_path / "c-%06d.tar", "--base-url", url, "--llm", "fake",
                    "--limit", "2")
        assert r.exit_code == 0, r.output
    written = "".join(p.read_text(errors="replace") for p in tmp_path.iterdir() if p.suffix in (".json", ".jsonl"))
    assert "127.0.0.1" in written
    assert "hunter2pass" not in written and "hunter2pass" not in r.output
    from lego_core.curate.client import public_url

    assert public_url("https://u:p@h.example/v1?key=s3cret") == "https://***@h.example/v1?key=***"


# --- 10. curate remembers the samples it paid for and rejected ----------------------------------------


def test_curate_does_not_pay_again_for_a_rejected_sample(tmp_path, monkeypatch):
    from curate_server import FakeLLM

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-rejected-00000000")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    first = json.loads(next(SH.iter_tar(str(EPIC)))["meta.json"])["label"]
    with FakeLLM() as llm:
        llm.default = "ok"
        llm.script(first, ["offtopic"] * 3)
        args = ["-q", "curate", EPIC, "--out", tmp_path / "cur-%06d.tar", "--base-url", llm.url, "--llm", "fake",
                "--limit", "3", "--json", "--retry-base-delay", "0.01"]
        r = run_cli(*args)
        assert r.exit_code == 0 and json.loads(r.output)["written"] == 2, r.output
        llm.reset_counts()
        r = run_cli(*args)
        assert r.exit_code == 0 and llm.total == 0, r.output                  # remembered, not asked again
        assert json.loads(r.output)["skipped_total"] == 1
        r = run_cli(*args, "--retry-rejected")
        assert r.exit_code == 0 and llm.total == 1 and json.loads(r.output)["written"] == 1, r.output


# --- 2. evaluate --model never scores another model's images -----------------------------------------


def test_evaluate_model_regenerates_for_another_model_and_refuses_a_missing_one(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.kit import make_tiny_instruct_pix2pix

    base = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8)
    a, b = tmp_path / "a", tmp_path / "b"
    build_from_pretrained(base, conditioning="label", vllm=16).save_pretrained(a)
    shutil.copytree(a, b)
    weights = next((b / "unet").glob("*.safetensors"))
    save_file({k: v * 1.5 + 0.01 for k, v in load_file(weights).items()}, weights)   # "retrained": same sizes

    def run(model):
        return run_cli("-q", "evaluate", EGO4D, "--model", model, "--metrics", "psnr", "--steps", "2", "--size", "16",
                       "-o", tmp_path / "eval", "--json")

    def images():
        folder = tmp_path / "eval" / "generated"
        return {p.name: p.read_bytes() for p in folder.glob("*.png")}

    r = run(a)
    assert r.exit_code == 0, r.output
    first, psnr_a = images(), json.loads(r.stdout)
    assert len(first) == 6 and (tmp_path / "eval" / "generated" / "provenance.json").is_file()
    assert run(a).exit_code == 0 and images() == first          # same model, same settings: reused
    r = run(b)
    assert r.exit_code == 0, r.output
    assert images().keys() == first.keys() and all(images()[k] != first[k] for k in first)
    assert json.loads(r.stdout) != psnr_a
    err = one_line_error(run(tmp_path / "missing"))
    assert "model folder not found" in err


# --- 9/10. generate: oversized images are bad input, --batch keys are checked ---------------------------


@pytest.fixture(scope="module")
def lego_model(tmp_path_factory):
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.kit import make_tiny_instruct_pix2pix

    root = tmp_path_factory.mktemp("lego")
    base = make_tiny_instruct_pix2pix(root / "ip2p", sample_size=8)
    build_from_pretrained(base, conditioning="description", vllm=16).save_pretrained(root / "model")
    return root / "model"


def _frame(path: Path, size=(40, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (120, 60, 30)).save(path)
    return path


def test_generate_oversized_image_is_exit_2_and_skipped_in_a_batch(tmp_path, lego_model, monkeypatch):
    from PIL import Image

    small, big = _frame(tmp_path / "small.png", (20, 10)), _frame(tmp_path / "big.png", (80, 60))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)       # big.png: 4800 pixels > 2 x 1000, a "bomb"
    fast = ["--model", lego_model, "--steps", "1", "--size", "16"]
    err = one_line_error(run_cli("generate", big, "cut onion", *fast, "-o", tmp_path / "one.png"))
    assert "too large" in err and not (tmp_path / "one.png").exists()
    requests = tmp_path / "req.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"key": "a", "image": str(small), "prompt": "cut onion"},
        {"key": "b", "image": str(big), "prompt": "cut onion"},
        {"key": "a", "image": str(small), "prompt": "wash plate"},
    ]) + "\n")
    r = run_cli("generate", "--batch", requests, *fast, "-o", tmp_path / "gen")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["a.png"]
    assert "skipped 2" in r.stderr and "already had an image" not in r.stderr


def test_generate_batch_with_an_empty_key_is_refused(tmp_path, lego_model):
    requests = tmp_path / "req.jsonl"
    requests.write_text(json.dumps({"key": "", "image": str(_frame(tmp_path / "f.png")), "prompt": "cut onion"}) + "\n")
    err = one_line_error(run_cli("generate", "--batch", requests, "--model", lego_model, "-o", tmp_path / "gen"))
    assert "cannot be a file name" in err and not (tmp_path / "gen" / ".png").exists()


def test_generated_images_are_written_under_a_temp_name_with_the_pid(tmp_path, monkeypatch):
    from PIL import Image

    from lego_core.diffusion import generate as G

    seen = []
    real = os.replace
    monkeypatch.setattr(G.os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
    G.save_image(Image.new("RGB", (4, 4)), tmp_path / "k.png")
    assert seen == [f".k.png.tmp-{os.getpid()}"]


# --- 10/11. import: only ever replace what lego wrote; the base's own tokenizer class ------------------


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory):
    """A tiny LEGO pipeline written as a tensors-only CompVis checkpoint, and its base folder."""
    import torch

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.importers import compvis
    from lego_core.kit import make_tiny_instruct_pix2pix

    d = tmp_path_factory.mktemp("ckpt")
    base = make_tiny_instruct_pix2pix(d / "base")
    pipe = build_from_pretrained(base, conditioning="description", vllm=16)
    state = compvis.to_compvis(unet=pipe.unet.state_dict(), unet_config=pipe.unet.config, vae=pipe.vae.state_dict(),
                               vae_config=pipe.vae.config, text_encoder=pipe.text_encoder.state_dict(),
                               conditioner=pipe.conditioner.state_dict())
    torch.save({"state_dict": state}, d / "plain.ckpt")
    return {"ckpt": d / "plain.ckpt", "base": base, "dir": d}


def test_import_overwrite_never_deletes_a_folder_lego_did_not_write(tmp_path, plain_ckpt):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    r = run_cli("import", "checkpoint", plain_ckpt["ckpt"], "--out", out, "--base", plain_ckpt["base"], "--overwrite")
    assert "import.json" in one_line_error(r)
    assert (out / "thesis.tex").read_text() == "years of work"
    # an earlier import is replaced; temp folders of a killed import are swept
    model = tmp_path / "model"
    dead = tmp_path / ".model.tmp-999999999"
    (dead / "unet").mkdir(parents=True)
    args = ["import", "checkpoint", plain_ckpt["ckpt"], "--out", model, "--base", plain_ckpt["base"]]
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args, "--overwrite").exit_code == 0 and (model / "import.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model"]


def test_import_with_a_base_keeps_the_base_tokenizer_class(tmp_path, plain_ckpt):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lego_core.diffusion.build import load_pipeline

    base = tmp_path / "base"
    shutil.copytree(plain_ckpt["base"], base)
    n = json.loads((base / "text_encoder" / "config.json").read_text())["vocab_size"]
    words = ["<unk>", "<pad>", "<s>", "</s>", "cut", "onion"] + [f"w{i}" for i in range(n - 6)]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>", model_max_length=77)
    shutil.rmtree(base / "tokenizer")
    tok.save_pretrained(base / "tokenizer")
    index = json.loads((base / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    (base / "model_index.json").write_text(json.dumps(index))

    r = run_cli("import", "checkpoint", plain_ckpt["ckpt"], "--out", tmp_path / "m", "--base", base)
    assert r.exit_code == 0, r.output
    imported = load_pipeline(tmp_path / "m").tokenizer
    assert "CLIP" not in type(imported).__name__           # PreTrainedTokenizerFast (TokenizersBackend in 5.x)
    assert imported("cut onion").input_ids == tok("cut onion").input_ids == [4, 5]


# --- 10. train's export and checkpoint pruning leave nothing stale or half-deleted ---------------------


def test_export_starts_from_an_empty_temp_folder_and_replaces_the_model(tmp_path):
    import subprocess
    import sys

    from lego_core.atomic import temp_name
    from lego_core.diffusion.export import save_replacing

    class Pipe:
        def save_pretrained(self, folder):
            os.makedirs(folder, exist_ok=True)
            Path(folder, "model_index.json").write_text("{}")

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):     # left by exports killed mid-way: another process's, and this pid's
        stale = Path(temp_name(tmp_path / "model", pid)) / "conditioner"
        stale.mkdir(parents=True)
        (stale / "config.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "unet.bin").write_text("an earlier export")
    save_replacing(Pipe(), tmp_path / "model", {"resolution": 64, "validation_steps": 2})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["lego.json", "model_index.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_checkpoint_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    import shutil

    from lego_core.engine import checkpoint as ckpt

    for step in (1, 2, 3):
        d = tmp_path / f"step-{step:08d}"
        d.mkdir()
        (d / "lego-state.json").write_text(json.dumps({"step": step}))
        (d / "weights.pt").write_bytes(b"x")

    def killed_midway(path, ignore_errors=False):   # the kill: one file gone, then nothing more
        os.remove(os.path.join(path, "weights.pt"))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path, 2, tmp_path / "step-00000003")
    monkeypatch.undo()
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    ckpt.sweep_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]


# --- one table of bad inputs: exit code, one line, no traceback, nothing lost -------------------------


def _single_file_rerun(tmp, request):
    out = tmp / "all.tar"
    assert run_cli("-q", "curate", EPIC, "--backend", "template", "--out", out, "--limit", "2").exit_code == 0
    before = out.read_bytes()
    return (["curate", EPIC, "--backend", "template", "--out", out, "--limit", "4"],
            lambda: out.read_bytes() == before)


def _strict_random_tar(tmp, request):
    (tmp / "r.tar").write_bytes(os.urandom(3000))
    return ["inspect", tmp / "r.tar", "--strict"], lambda: True


def _missing_model_after_images(tmp, request):
    gen = tmp / "eval" / "generated"
    gen.mkdir(parents=True)
    for key in keys_in(EGO4D):                   # an earlier model's images, one per sample
        _frame(gen / f"{key}.png")
    before = {p.name: p.read_bytes() for p in gen.iterdir()}
    return (["evaluate", EGO4D, "--model", tmp / "nope", "--metrics", "psnr", "-o", tmp / "eval"],
            lambda: {p.name: p.read_bytes() for p in gen.iterdir()} == before)


def _key_over_plain_http(tmp, request):
    request.getfixturevalue("monkeypatch").setenv("OPENAI_API_KEY", "sk-test-table-00000000")
    return (["curate", EPIC, "--out", tmp / "c-%06d.tar", "--base-url", "http://192.0.2.1/v1"],
            lambda: not list(tmp.glob("c-*.tar")))


def _every_pair_rejected(tmp, request):
    (tmp / "videos").mkdir()
    return (["extract", "--dataset", "epic-kitchens", "--annotations", REPO / "tests/data/EPIC_100_train_excerpt.csv",
             "--videos", tmp / "videos", "--out", tmp / "x-%06d.tar", "--limit", "3"],
            lambda: (tmp / "x.rejects.jsonl").read_text().count("\n") == 3)


def _broken_conditioner_config(tmp, request):
    import shutil

    model = tmp / "model"
    shutil.copytree(request.getfixturevalue("lego_model"), model)
    (model / "conditioner" / "config.json").write_text("{ not json")
    frame = _frame(tmp / "f.png")
    return ["generate", frame, "cut onion", "--model", model, "-o", tmp / "o.png"], lambda: not (tmp / "o.png").exists()


def _unreadable_input_shard(tmp, request):
    (tmp / "b.tar").write_bytes(os.urandom(3000))
    base = request.getfixturevalue("lego_model").parent / "ip2p"
    return (["train", EGO4D, tmp / "b.tar", "--base", base, "--conditioning", "label", "--out", tmp / "run",
             "--max-steps", "1"], lambda: not (tmp / "run").exists())


def _missing_base(tmp, request):
    return (["train", EGO4D, "--base", tmp / "no-base", "--conditioning", "label", "--out", tmp / "run"],
            lambda: not (tmp / "run").exists())


def _empty_batch_key(tmp, request):
    (tmp / "r.jsonl").write_text(json.dumps({"key": " ", "image": str(_frame(tmp / "f.png")), "prompt": "x"}) + "\n")
    return (["generate", "--batch", tmp / "r.jsonl", "--model", request.getfixturevalue("lego_model"), "-o", tmp / "g"],
            lambda: not (tmp / "g").exists())


def _overwrite_a_folder_lego_did_not_write(tmp, request):
    c = request.getfixturevalue("plain_ckpt")
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return (["import", "checkpoint", c["ckpt"], "--out", tmp / "out", "--base", c["base"], "--overwrite"],
            lambda: (tmp / "out" / "notes.txt").read_text() == "mine")


BAD_INPUTS = {   # name: (setup -> (args, nothing_lost), exit code, words the line must hold[, words it must not])
    "single-file --out rerun": (_single_file_rerun, 2, "%06d"),
    "inspect --strict, random bytes": (_strict_random_tar, 1, "corrupt"),
    "evaluate --model missing, images there": (_missing_model_after_images, 2, "model folder not found"),
    "API key over plain http": (_key_over_plain_http, 2, "--allow-insecure-http"),
    "extract, every pair rejected": (_every_pair_rejected, 2, "video not found"),
    "broken conditioner/config.json": (_broken_conditioner_config, 2, "conditioner/config.json"),
    "train, unreadable input shard": (_unreadable_input_shard, 2, "not a tar file", "--overwrite"),
    "train, --base missing": (_missing_base, 2, "--base"),
    "generate --batch, empty key": (_empty_batch_key, 2, "cannot be a file name"),
    "import --overwrite, a folder lego did not write": (_overwrite_a_folder_lego_did_not_write, 2, "import.json"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_loses_nothing(name, tmp_path, request):
    setup, code, words, *forbidden = BAD_INPUTS[name]
    args, nothing_lost = setup(tmp_path, request)
    r = run_cli("-q", *args)
    err = one_line_error(r, code)
    assert words in err and not any(f in err for f in forbidden), err
    assert nothing_lost(), name
