"""`lego tune-vllm`: the recipe on a tiny LLaVA — answer-only labels, overfitting, frozen vision
tower, torchrun ZeRO-2/ZeRO-3, kill -9 + resume, the output loading in `lego enrich`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import LEGO, REPO, run_cli

FAST = ["--workers", "0", "--precision", "fp32", "--log-every", "1"]


def answer_of(meta: dict) -> str:
    return f"Hold the {meta['noun'] or 'object'} with the left hand and {meta['label']}."


@pytest.fixture(scope="module")
def llava(tiny_llava) -> Path:
    return tiny_llava


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """4 bundled samples with a curated.txt, 2 per shard (2 shards: one per rank)."""
    from lego_core.data.shards import ShardWriter, iter_samples

    out = tmp_path_factory.mktemp("curated")
    with ShardWriter(str(out / "c-%06d.tar"), max_samples=2) as w:
        for _, s in zip(range(4), iter_samples([str(REPO / "shards")])):
            s = {k: v for k, v in s.items() if not k.startswith("__url")}
            s["curated.txt"] = answer_of(json.loads(s["meta.json"]))
            w.write(s)
    return out


def env(**extra):
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}


def events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_labels_cover_only_the_answer_and_truncation_keeps_the_prompt(llava):
    from PIL import Image
    from transformers import AutoProcessor

    from lego_core.vllm.tune_data import IGNORE, SkipSample, answer_mask_kind, collate_examples, encode_example

    processor = AutoProcessor.from_pretrained(llava)
    tok = processor.tokenizer
    image = Image.new("RGB", (48, 32), (200, 30, 30))
    answer = "Hold the onion with the left hand and cut it."
    assert answer_mask_kind(processor) == "generation"
    ex = encode_example(processor, image, "How do I cut onion here?", answer)
    labelled = ex["labels"][ex["labels"] != IGNORE]
    assert tok.decode(labelled) == answer + tok.eos_token
    assert (ex["input_ids"] == processor.image_token_id).sum() == 16 and ex["pixel_values"].shape == (3, 32, 32)

    from lego_core.kit import LLAVA_CHAT_TEMPLATE

    processor.chat_template = LLAVA_CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert answer_mask_kind(processor) == "prefix"       # untagged template: what follows the prompt
    pre = encode_example(processor, image, "How do I cut onion here?", answer)
    assert torch.equal(pre["labels"], ex["labels"]) and torch.equal(pre["input_ids"], ex["input_ids"])

    processor.chat_template = None                       # no template: LLaVA-1.5's format, same answer tokens
    tok.chat_template = None
    assert answer_mask_kind(processor) == "fallback"
    fb = encode_example(processor, image, "How do I cut onion here?", answer)
    assert tok.decode(fb["labels"][fb["labels"] != IGNORE]) == answer + tok.eos_token
    assert torch.equal(fb["input_ids"], ex["input_ids"])

    n_prompt = int((ex["labels"] == IGNORE).sum())
    cut = encode_example(processor, image, "How do I cut onion here?", answer, max_length=n_prompt + 3)
    assert len(cut["input_ids"]) == n_prompt + 3 and (cut["labels"] != IGNORE).sum() == 3
    with pytest.raises(SkipSample):
        encode_example(processor, image, "How do I cut onion here?", answer, max_length=n_prompt)
    batch = collate_examples([ex, cut], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ex["input_ids"]))
    assert (batch["labels"][1, n_prompt + 3:] == IGNORE).all() and batch["attention_mask"][1].sum() == n_prompt + 3


# llava-hf/llava-1.5-7b-hf's chat_template, verbatim: the answer is `text + ' '` in the generation
# tag, with no eos_token (the kit's tiny template adds one, which hid a missing EOS in the labels).
LLAVA_15_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_GEN = "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"


@pytest.mark.parametrize("kind, template", [
    ("generation", LLAVA_15_HF_TEMPLATE),                                  # trailing ' ' -> the EOS
    ("prefix", LLAVA_15_HF_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")),
    ("generation", LLAVA_15_HF_TEMPLATE.replace(_GEN, "{% generation %}{{ content['text'] }}{% endgeneration %}")),
    ("generation", LLAVA_15_HF_TEMPLATE.replace(_GEN, "{% generation %}{{ content['text'] }}{% endgeneration %}"
                                                      "{{ eos_token }}")),  # EOS outside the tag: labelled
])
def test_labels_end_with_eos_when_the_template_has_none(llava, kind, template):
    from PIL import Image
    from transformers import AutoProcessor

    from lego_core.vllm.tune_data import IGNORE, answer_mask_kind, encode_example

    processor = AutoProcessor.from_pretrained(llava)
    tok = processor.tokenizer
    image = Image.new("RGB", (48, 32), (200, 30, 30))
    answer, question = "Hold the onion with the left hand and cut it.", "How do I cut onion here?"
    kit = encode_example(processor, image, question, answer)          # the kit's template: answer + eos_token
    processor.chat_template = template
    assert answer_mask_kind(processor) == kind
    ex = encode_example(processor, image, question, answer)
    labelled = ex["labels"][ex["labels"] != IGNORE]
    assert labelled[-1] == tok.eos_token_id and tok.decode(labelled) == answer + tok.eos_token
    assert int((ex["input_ids"] == tok.eos_token_id).sum()) == 1         # one EOS, at the end of the answer
    for key in ("input_ids", "attention_mask", "labels"):                # LLaVA's own format, token for token
        assert torch.equal(ex[key], kit[key]), key
    n_prompt = int((ex["labels"] == IGNORE).sum())
    n = len(ex["input_ids"])
    cut = encode_example(processor, image, question, answer, max_length=n - 1)   # truncation: the EOS goes
    assert torch.equal(cut["labels"], ex["labels"][:n - 1]) and len(cut["attention_mask"]) == n - 1
    assert tok.eos_token_id not in cut["labels"].tolist() and (cut["labels"] != IGNORE).sum() == n - 1 - n_prompt


def test_question_is_drawn_per_sample_and_epoch_reproducibly():
    from lego_core.vllm.templates import tuning_question
    from lego_core.vllm.tune import question_seed

    draws = {tuning_question("cut onion", question_seed(0, e, "k")) for e in range(40)}
    assert len(draws) >= 8                               # the ten templates get used
    assert question_seed(0, 3, "k") == question_seed(0, 3, "k") != question_seed(1, 3, "k")


def test_missing_curated_txt_exits_2_with_one_line(llava, tmp_path):
    r = run_cli("tune-vllm", str(REPO / "shards"), "--vllm", llava, "--out", tmp_path / "run", "--max-steps", "1")
    assert r.exit_code == 2
    assert "curated.txt" in r.stderr and "lego curate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cpu_offload_of_optimizer_and_parameters(llava, curated, tmp_path):
    run = tmp_path / "run"
    r = run_cli("-q", "tune-vllm", str(curated), "--vllm", llava, "--out", run, "--max-steps", "1", "--batch-size", "2",
                "--offload-optimizer", "--offload-params", *FAST)
    assert r.exit_code == 0, r.output
    zero = json.loads((run / "tune-config.json").read_text())["resolved"]["deepspeed"]["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert (run / "model" / "model.safetensors").is_file()
    bad = run_cli("tune-vllm", str(curated), "--vllm", llava, "--out", run, "--zero", "2", "--offload-params")
    assert bad.exit_code == 2 and "--zero 3" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _greedy_prefix_words(folder, curated) -> list[int]:
    """Per training sample: how many leading words of its curated answer the greedy answer (to the
    inference question, on its input frame) reproduces."""
    import io

    from PIL import Image

    from lego_core.data.shards import iter_samples
    from lego_core.vllm.describe import describe_and_embed
    from lego_core.vllm.load import load_vllm

    model, processor = load_vllm(folder, device="cpu")
    samples = list(iter_samples([str(curated)]))
    images = [Image.open(io.BytesIO(s["input.jpg"])) for s in samples]
    labels = [json.loads(s["meta.json"])["label"] for s in samples]
    outs = describe_and_embed(model, processor, images, labels, greedy=True, max_new_tokens=8)
    matched = []
    for o, s in zip(outs, samples):
        got, want = o.description.split(), s["curated.txt"].decode().split()
        matched.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))))
    return matched


def test_overfits_trains_projector_and_lm_not_vision_tower(llava, curated, tmp_path):
    from transformers import LlavaForConditionalGeneration

    run = tmp_path / "run"
    r = run_cli("-q", "tune-vllm", str(curated), "--vllm", llava, "--out", run, "--max-steps", "25",
                "--batch-size", "4", "--lr", "1e-2", "--zero", "3", *FAST, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["model"] == str(run / "model")
    steps = [e for e in events(run) if "loss" in e]
    assert len(steps) == 25
    first, last = steps[0]["loss"], min(e["loss"] for e in steps[-3:])
    assert last <= 0.5 * first, (first, last)
    lrs = [e["lr"] for e in steps]                      # 3 % warmup (1 step), then cosine decay
    assert lrs[0] == 0 and lrs[1] == pytest.approx(1e-2) and lrs[-1] < 1e-4 and lrs == sorted(lrs[:2]) + lrs[2:]
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    before, after = _greedy_prefix_words(llava, curated), _greedy_prefix_words(run / "model", curated)
    assert sum(b > 0 for b in before) < sum(a >= 2 for a in after) == len(after), (before, after)

    before = LlavaForConditionalGeneration.from_pretrained(llava).state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(run / "model").state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if ".vision_tower." in k}
    for part in (".multi_modal_projector.", ".language_model.", "lm_head."):
        assert any(part in k for k in changed), part
    config = json.loads((run / "tune-config.json").read_text())
    assert config["gradient_checkpointing"] and config["resolved"]["deepspeed"]["zero_optimization"]["stage"] == 3
    assert config["resolved"]["answer_tokens"] == "generation"


def test_train_vision_tower_flag_trains_the_tower(llava, curated, tmp_path):
    """A random tower (the kit's) has nothing to keep: `--train-vision-tower` trains it too."""
    from transformers import LlavaForConditionalGeneration

    run = tmp_path / "run"
    r = run_cli("-q", "tune-vllm", str(curated), "--vllm", llava, "--out", run, "--max-steps", "2",
                "--batch-size", "2", "--lr", "1e-2", "--zero", "2", "--train-vision-tower", *FAST)
    assert r.exit_code == 0, r.output
    before = LlavaForConditionalGeneration.from_pretrained(llava).state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(run / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".vision_tower." in k for k in changed)
    assert json.loads((run / "tune-config.json").read_text())["train_vision_tower"] is True


@pytest.fixture(scope="module")
def linear_llava(tmp_path_factory) -> Path:
    """A tiny folder as `lego import vllm` writes for LLaVA v1: "projector_type": "linear", the
    single-linear projector's weights (seeded, not the 2-layer MLP's)."""
    from lego_core.vllm.linear_llava import LlavaLinearProjectorForConditionalGeneration
    from lego_core.kit.llava import tiny_llava

    model, processor = tiny_llava()
    model.config.projector_type = "linear"
    torch.manual_seed(1)
    linear = LlavaLinearProjectorForConditionalGeneration(model.config)
    folder = tmp_path_factory.mktemp("linear") / "llava"
    linear.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def _projector(model) -> dict:
    return {k: v.detach().clone() for k, v in model.model.multi_modal_projector.state_dict().items()}


def test_linear_projector_import_tunes_with_its_own_projector(linear_llava, curated, tmp_path):
    from lego_core.vllm.linear_llava import LinearProjector, LlavaLinearProjectorForConditionalGeneration
    from lego_core.vllm.load import load_vllm
    from lego_core.vllm.tune import load_base

    original, _ = load_vllm(linear_llava, device="cpu")
    want = _projector(original)
    assert set(want) == {"linear.weight", "linear.bias"}
    base, _ = load_base(str(linear_llava), torch.float32, {})           # not a fresh random MLP
    assert isinstance(base, LlavaLinearProjectorForConditionalGeneration)
    got = _projector(base)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    run = tmp_path / "run"                                              # ZeRO-3 (partitioned load), lr 0
    r = run_cli("-q", "tune-vllm", str(curated), "--vllm", linear_llava, "--out", run, "--max-steps", "1",
                "--batch-size", "2", "--lr", "0", "--zero", "3", *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "model" / "config.json").read_text())["projector_type"] == "linear"
    tuned, _ = load_vllm(run / "model", device="cpu")
    assert isinstance(tuned.model.multi_modal_projector, LinearProjector)
    after = _projector(tuned)
    assert after.keys() == want.keys() and all(torch.equal(after[k], want[k]) for k in want)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["2", "3"])
def test_torchrun_two_ranks(llava, curated, tmp_path, zero):
    from lego_core.engine.launch import free_port

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lego_cli.main", "-q", "tune-vllm", str(curated), "--vllm", str(llava), "--out", str(run),
           "--max-steps", "2", "--batch-size", "1", "--zero", zero, *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(run / "model")]      # printed once, by rank 0
    assert (run / "model" / "model.safetensors").is_file()
    assert [e["world_size"] for e in events(run) if e.get("event") == "start"] == [2]


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_the_output_loads_in_enrich(llava, curated, tmp_path):
    run = tmp_path / "run"
    args = ["-q", "tune-vllm", str(curated), "--vllm", str(llava), "--out", str(run), "--max-steps", "60",
            "--batch-size", "2", "--checkpoint-every", "2", *FAST]
    proc = subprocess.Popen([LEGO, *args], env=env(), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "killed.err", "w"))
    deadline = time.time() + 120
    while time.time() < deadline:                        # a finished checkpoint at step >= 4 (keep 2: any)
        if any(int(p.parent.name[5:]) >= 4 for p in (run / "checkpoints").glob("step-*/lego-state.json")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "tuning ended before it could be killed"

    done = run_cli(*args)                                # the rerun, in-process
    assert done.exit_code == 0, done.output
    log = events(run)
    resume = [e for e in log if e.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] >= 4 and resume[0]["step"] % 2 == 0
    final = [e for e in log if e.get("event") == "done"]
    assert final[-1]["step"] == 60 and final[-1]["steps_run"] == 60 - resume[0]["step"]
    after_resume = [e["step"] for e in log[log.index(resume[0]):] if "loss" in e]
    assert after_resume == list(range(resume[0]["step"] + 1, 61))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".partial")]
    again = run_cli(*args)                               # finished: nothing is redone
    assert again.exit_code == 0 and events(run)[-1] == {**events(run)[-1], "event": "done", "steps_run": 0}

    enriched = run_cli("-q", "enrich", str(curated), "--vllm", run / "model", "--out", tmp_path / "e" / "e-%06d.tar",
                       "--greedy", "--max-new-tokens", "4", "--json")
    assert enriched.exit_code == 0, enriched.output
    assert json.loads(enriched.stdout.splitlines()[-1])["written"] == 4


def test_help_lists_the_command():
    r = run_cli("--help")
    assert "tune-vllm" in r.output
    h = run_cli("tune-vllm", "--help")
    assert h.exit_code == 0 and "2e-05" in h.output and "--offload-optimizer" in h.output
