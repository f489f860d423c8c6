"""`lego enrich` end to end on the bundled sample shards with a tiny LLaVA built by the kit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LEGO, REPO, run_cli, run_lego

FAST = ["--max-new-tokens", "4", "--batch-size", "4", "--greedy"]


@pytest.fixture(scope="module")
def llava_dir(tiny_llava):
    return tiny_llava


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """The 22 bundled samples re-cut into 4 shards (6, 6, 6, 4 samples)."""
    from lego_core.data.shards import ShardWriter, iter_samples

    folder = tmp_path_factory.mktemp("in")
    with ShardWriter(str(folder / "in-%06d.tar"), max_samples=6) as w:
        for s in iter_samples(str(REPO / "shards")):
            w.write(s)
    return [Path(p) for p in w.shards]


def _samples(paths) -> dict[str, dict]:
    from lego_core.data.shards import iter_samples

    return {s["__key__"]: s for s in iter_samples([str(p) for p in paths], validate=False)}


def _enrich(llava_dir, out, *args, inputs):
    r = run_cli("-q", "enrich", *map(str, inputs), "--vllm", llava_dir, "--out", out, *args)
    assert r.exit_code == 0, r.output
    return r


def test_help_explains_seed_and_batching():
    r = run_cli("enrich", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "depend on the seed AND on how samples are batched" in text
    assert "--greedy" in text and "Examples:" in text and "SLURM_ARRAY_TASK_COUNT" in text


def test_enrich_adds_three_fields_and_keeps_the_rest(tmp_path, llava_dir, inputs):
    from lego_core.data.schema import ENRICHED, VLLM_IMG, VLLM_TXT, decode_npy, validate_sample

    out = tmp_path / "out" / "e-%06d.tar"
    r = run_cli("-q", "enrich", *map(str, inputs), "--vllm", llava_dir, "--out", out, *FAST,
                "--max-text-tokens", "3", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["written"] == 22 and summary["skipped_total"] == 0
    assert summary["samples_per_second"] > 0 and "H_i 16 x 64 float16" in summary["storage"]
    outputs = sorted((tmp_path / "out").glob("e-*.tar"))
    assert [p.name for p in outputs] == [f"e-{i:06d}.tar" for i in range(4)]

    before, after = _samples(inputs), _samples(outputs)
    assert before.keys() == after.keys()
    for key, s in before.items():
        e = after[key]
        assert set(e) == set(s) | {ENRICHED, VLLM_IMG, VLLM_TXT}
        for name in s:
            if not name.startswith("_"):
                assert e[name] == s[name], (key, name)  # byte-identical
        assert validate_sample(e, [ENRICHED, VLLM_IMG, VLLM_TXT]) == []
        assert decode_npy(e[VLLM_IMG]).shape == (16, 64)
        assert decode_npy(e[VLLM_TXT]).shape == (3, 64)  # --max-text-tokens
    config = json.loads((tmp_path / "out" / "e.enrich.json").read_text())
    assert config["greedy"] is True and config["max_text_tokens"] == 3 and len(config["inputs"]) == 4


def test_human_summary_and_storage_line(tmp_path, llava_dir, inputs):
    r = run_cli("enrich", str(inputs[3]), "--vllm", llava_dir, "--out", tmp_path / "one.tar", *FAST)
    assert r.exit_code == 0
    assert "samples enriched: 4" in r.output and "samples/s" in r.output
    assert "storage: each sample gains up to" in r.output


def test_storage_estimate_for_the_authors_llava_13b():
    from lego_core.vllm.enrich import storage_estimate

    size, text = storage_estimate(256, 5120, 77, 1024)
    assert "H_i 256 x 5120 float16 = 2.62 MB" in text and "H_t <= 77 x 5120" in text
    assert 256 * 5120 * 2 + 77 * 5120 * 2 < size < 3.5e6
    assert "bounded only by --max-new-tokens" in storage_estimate(256, 5120, 0, 1024)[1]


def test_parts_are_disjoint_and_cover_everything(tmp_path, llava_dir, inputs):
    whole = tmp_path / "whole"
    _enrich(llava_dir, whole / "e-%06d.tar", *FAST, inputs=inputs)
    parts = tmp_path / "parts"
    # task 0 from flags, task 1 from a SLURM array environment (--array=1-2: ids 1..2, min 1)
    _enrich(llava_dir, parts / "e-%06d.tar", *FAST, "--num-shards", "2", "--shard-index", "0", inputs=inputs)
    env = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _enrich(llava_dir, parts / "e-%06d.tar", *FAST, inputs=inputs)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    names = sorted(p.name for p in parts.glob("e-*.tar"))
    assert names == [f"e-{i:06d}.tar" for i in range(4)]
    for name in names:  # greedy: the split changes nothing
        assert (parts / name).read_bytes() == (whole / name).read_bytes()
    assert (parts / "e.rejects-0-of-2.jsonl").exists() and (parts / "e.rejects-1-of-2.jsonl").exists()


def test_resolve_task():
    from lego_core.errors import BadInput
    from lego_core.vllm.enrich import my_part, resolve_task

    assert resolve_task(None, None, {}) == (0, 1)
    assert resolve_task(4, 3, {}) == (3, 4)
    slurm = {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4"}
    assert resolve_task(None, None, slurm) == (3, 4)
    assert resolve_task(None, None, {**slurm, "SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "0",
                                     "SLURM_ARRAY_TASK_STEP": "5"}) == (2, 4)
    assert resolve_task(2, 0, slurm) == (0, 2)  # flags win
    for bad in [(2, 2), (0, 0), (2, None)]:
        with pytest.raises(BadInput):
            resolve_task(*bad, {})
    parts = [my_part(10, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and all(parts)


def test_rerun_skips_finished_shards_and_overwrite_redoes_them(tmp_path, llava_dir, inputs):
    out = tmp_path / "out"
    _enrich(llava_dir, out / "e-%06d.tar", *FAST, inputs=inputs)
    shards = sorted(out.glob("e-*.tar"))
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    r = _enrich(llava_dir, out / "e-%06d.tar", *FAST, "--json", inputs=inputs)
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["written"] == 0 and summary["already_done"] == 22 and summary["shards_done_before"] == 4
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards} == stamps

    shards[2].unlink()
    r = _enrich(llava_dir, out / "e-%06d.tar", *FAST, "--json", inputs=inputs)
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["written"] == 6 and summary["shards_written"] == [str(shards[2])]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards if p != shards[2]} == \
        {p: s for p, s in stamps.items() if p != shards[2]}

    r = _enrich(llava_dir, out / "e-%06d.tar", *FAST, "--json", "--overwrite", inputs=inputs)
    assert json.loads(r.output.strip().splitlines()[-1])["written"] == 22

    r = run_cli("enrich", *map(str, inputs[:2]), "--vllm", llava_dir, "--out", out / "e-%06d.tar", *FAST)
    assert r.exit_code == 2 and "different list of input shards" in r.output


@pytest.mark.slow
def test_killed_run_leaves_no_shard_that_looks_finished(tmp_path, llava_dir, inputs):
    from lego_core.vllm.enrich import count_samples

    out = tmp_path / "out"
    args = [*map(str, inputs), "--vllm", str(llava_dir), "--out", str(out / "e-%06d.tar"),
            "--max-new-tokens", "48", "--batch-size", "1", "--greedy"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([LEGO, "-q", "enrich", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # kill once shard 0 is finished and shard 1 is being written
            if (out / "e-000000.tar").exists() and list(out.glob(".e-000001.tar.tmp-*")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(out.glob("e-*.tar"))
    assert finished == [out / "e-000000.tar"]  # the shard in progress has only a hidden temp name
    assert count_samples(str(finished[0])) == count_samples(str(inputs[0]))
    assert list(out.glob(".e-000001.tar.tmp-*"))

    # the rerun removes the dead temp, keeps shard 0, and ends where an uninterrupted run would
    stamp = finished[0].stat().st_mtime_ns
    r = run_cli("-q", "enrich", *args[:-5], "--max-new-tokens", "48", "--batch-size", "1", "--greedy", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["shards_done_before"] == 1 and summary["written"] == 22 - count_samples(str(inputs[0]))
    assert finished[0].stat().st_mtime_ns == stamp and not list(out.glob(".*tmp*"))
    ref = tmp_path / "ref"
    _enrich(llava_dir, ref / "e-%06d.tar", "--max-new-tokens", "48", "--batch-size", "1", "--greedy", inputs=inputs)
    for p in sorted(ref.glob("e-*.tar")):
        assert (out / p.name).read_bytes() == p.read_bytes()


def _corrupt_inputs(folder: Path, inputs) -> list[Path]:
    """Shard 0: an undecodable JPEG, no meta.json, a label with no words, 2 good samples;
    shard 1: only a bad one."""
    from lego_core.data.shards import ShardWriter

    samples = list(_samples(inputs[:1]).values())
    broken = dict(samples[0])
    broken["input.jpg"] = b"\xff\xd8\xff" + b"\x00" * 200 + b"\xff\xd9"  # JPEG markers, no image
    no_meta = {k: v for k, v in samples[1].items() if k != "meta.json"}
    dots = dict(samples[2])
    dots["meta.json"] = json.dumps({**json.loads(dots["meta.json"]), "label": "..."}).encode()
    paths = []
    for i, group in enumerate([[broken, no_meta, dots, *samples[3:5]], [dict(broken)]]):
        with ShardWriter(str(folder / f"bad-{i:06d}.tar")) as w:
            for s in group:
                w.write(s)
        paths.append(folder / f"bad-{i:06d}.tar")
    return paths


def test_rejects_have_reasons_and_an_all_rejected_shard_is_still_finished(tmp_path, llava_dir, inputs):
    bad = _corrupt_inputs(tmp_path, inputs)
    out = tmp_path / "out"
    r = _enrich(llava_dir, out / "e-%06d.tar", *FAST, "--json", inputs=bad)
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["written"] == 2
    assert summary["skipped"] == {"input.jpg does not decode": 2, "meta.json is missing": 1, "unusable action label": 1}
    rejects = [json.loads(line) for line in Path(summary["rejects_file"]).read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["input.jpg does not decode"] * 2 + [
        "meta.json is missing", "unusable action label"]
    assert all(r["key"] and r["url"] for r in rejects)
    assert (out / "e-000001.tar").exists()  # every sample rejected: empty, but done
    from lego_core.vllm.enrich import count_samples

    assert count_samples(str(out / "e-000001.tar")) == 0
    # a rerun has nothing to do and keeps the rejects of the finished shards
    r = _enrich(llava_dir, out / "e-%06d.tar", *FAST, "--json", inputs=bad)
    assert json.loads(r.output.strip().splitlines()[-1])["written"] == 0
    assert len(Path(summary["rejects_file"]).read_text().splitlines()) == 4


def test_a_failing_sample_does_not_take_its_batch_down(tmp_path, llava_dir, inputs, monkeypatch):
    import lego_core.vllm.describe as describe

    real = describe.describe_and_embed
    victim = next(iter(_samples(inputs[3:]).values()))
    victim_label = json.loads(victim["meta.json"])["label"]

    def flaky(model, processor, images, labels, **kw):
        if victim_label in labels:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, processor, images, labels, **kw)

    monkeypatch.setattr(describe, "describe_and_embed", flaky)
    r = _enrich(llava_dir, tmp_path / "o.tar", *FAST, "--json", inputs=inputs[3:])
    summary = json.loads(r.output.strip().splitlines()[-1])
    same_label = sum(json.loads(s["meta.json"])["label"] == victim_label for s in _samples(inputs[3:]).values())
    assert summary["skipped"] == {"generation failed": same_label}
    assert summary["written"] == 4 - same_label


@pytest.mark.parametrize("args, message", [
    (["--vllm", "{tmp}"], "not a LLaVA folder"),
    (["--vllm", "{tmp}/nope/llava"], "LLaVA folder not found"),
    (["--shard-index", "2", "--num-shards", "2"], "--shard-index must be in 0..1"),
    (["--out", "{indir}/in-%06d.tar"], "would overwrite an input shard"),
    (["--out", "{tmp}/single.tar"], "names one file"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, llava_dir, inputs, args, message):
    fill = {"tmp": str(tmp_path), "indir": str(inputs[0].parent)}
    args = [a.format(**fill) for a in args]
    base = {"--vllm": str(llava_dir), "--out": str(tmp_path / "o" / "e-%06d.tar")}
    for flag in list(base):
        if flag in args:
            base.pop(flag)
    flat = [x for kv in base.items() for x in kv]
    r = run_cli("enrich", *map(str, inputs), *flat, *args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lego: error:") and message in lines[0], r.output


def test_no_shards_is_bad_input_in_a_real_process(tmp_path, llava_dir):
    r = run_lego("enrich", str(tmp_path / "missing-{000000..000003}.tar"), "--vllm", llava_dir,
                 "--out", tmp_path / "o-%06d.tar")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("lego: error: shard not found")
    assert "Traceback" not in r.stderr


def test_listed_in_lego_help():
    r = run_cli("--help")
    assert "enrich" in r.output


def test_python_api(tmp_path, llava_dir, inputs):
    from lego_core.vllm.enrich import EnrichConfig, enrich
    from lego_core.vllm.load import load_vllm

    model, processor = load_vllm(llava_dir)
    cfg = EnrichConfig(shards=[str(inputs[3])], vllm=str(llava_dir), out=str(tmp_path / "o.tar"),
                       max_new_tokens=3, greedy=True, batch_size=2)
    summary = enrich(cfg, progress=False, model=model, processor=processor)
    assert summary.written == 4 and summary.task == (0, 1)


def test_imported_samples_are_asked_in_the_authors_wording(tmp_path, llava_dir, inputs, monkeypatch):
    """A sample from `lego import dataset` is asked about "cut the onion" (the authors' Ego4D
    wording, article kept), not about its label "cut onion"; a sample of our own about its label."""
    import io

    import numpy as np
    from PIL import Image

    import lego_core.vllm.describe as describe

    root = tmp_path / "LEGO_Data"
    entry = {"image_0": "c/0_pre.jpg", "image_1": "c/0_pnr.jpg", "action": "#C C cuts the onion"}
    for rel in (entry["image_0"], entry["image_1"]):
        (root / "EgoGen" / "ego4d.fho" / "val" / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray((np.random.RandomState(0).rand(24, 32, 3) * 255).astype("uint8")).save(buf, "JPEG")
        (root / "EgoGen" / "ego4d.fho" / "val" / rel).write_bytes(buf.getvalue())
    (root / "ego4d_val.json").write_text(json.dumps({"c": {"0": entry}}))
    imported = run_cli("-q", "import", "dataset", root, "--split", "val", "--out", tmp_path / "in" / "val-%06d.tar")
    assert imported.exit_code == 0, imported.output

    asked = []
    real = describe.describe_and_embed

    def spy(model, processor, images, labels, **kw):
        asked.extend(kw["questions"])
        return real(model, processor, images, labels, **kw)

    monkeypatch.setattr(describe, "describe_and_embed", spy)
    _enrich(llava_dir, tmp_path / "o" / "e-%06d.tar", *FAST,
            inputs=[*sorted((tmp_path / "in").glob("*.tar")), inputs[3]])
    ours = [json.loads(s["meta.json"])["label"] for s in _samples([inputs[3]]).values()]
    assert asked == [f"How does the person properly {action} that is displayed in the video frame?"
                     for action in ["cut the onion", *ours]]
