"""`lego import`: the authors' checkpoint / VLLM / dataset layouts, made here from tiny models,
imported through the CLI and checked to give the same outputs as the models they were made from."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

VLLM_DIM = 16


def _err_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lego: error: ")
    return lines[0]


# -- key maps ------------------------------------------------------------------------------------


def test_sd15_key_map_names_every_weight_once():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lego_core.importers import compvis
    from lego_core.importers.sd15_files import SD15

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((SD15 / "unet_config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((SD15 / "vae_config.json").read_text()))
    unet_names = {compvis.unet_to_compvis(k, unet.config) for k in unet.state_dict()}
    vae_names = {compvis.vae_to_compvis(k, vae.config) for k in vae.state_dict()}
    assert len(unet_names) == len(unet.state_dict()) == 686      # SD-1.5's UNet: 686 tensors
    assert len(vae_names) == len(vae.state_dict()) == 248        # and its VAE: 248
    for name in ("input_blocks.0.0.weight", "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight",
                 "middle_block.1.proj_in.weight", "middle_block.2.emb_layers.1.bias", "output_blocks.2.1.conv.weight",
                 "output_blocks.5.2.conv.weight", "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
                 "time_embed.2.weight", "out.2.weight"):
        assert name in unet_names, name
    for name in ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.mid.attn_1.q.weight",
                 "decoder.up.3.upsample.conv.weight", "decoder.norm_out.bias", "post_quant_conv.weight"):
        assert name in vae_names, name
    assert compvis.ema_name("model.diffusion_model.input_blocks.0.0.weight") == \
        "model_ema.diffusion_modelinput_blocks00weight"
    ema = {compvis.ema_name(compvis.UNET_PREFIX + n) for n in unet_names}
    assert len(ema) == len(unet_names)                            # the dot-less names stay distinct


def test_clip_vocab_built_from_the_bpe_file(tmp_path):
    """vocab.json/merges.txt built from a CLIP-format bpe .txt.gz equal the tokenizer it came from."""
    from transformers import CLIPTokenizer

    from lego_core.importers.sd15_files import clip_vocab_from_bpe, write_sd15_tokenizer
    from lego_core.kit import make_clip_tokenizer

    kit = make_clip_tokenizer(tmp_path / "kit")
    merges = (tmp_path / "kit" / "merges.txt").read_text().splitlines()[1:]
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(merges) + "\n")
    vocab, _ = clip_vocab_from_bpe(bpe)
    assert vocab == json.loads((tmp_path / "kit" / "vocab.json").read_text())
    write_sd15_tokenizer(tmp_path / "tok", bpe)
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.model_max_length == 77
    text = ["The person cuts the onion on the chopping board.", ""]
    assert tok(text, padding="max_length").input_ids == kit(text, padding="max_length").input_ids


@pytest.mark.skipif(__import__("lego_core.importers.sd15_files", fromlist=["x"]).find_clip_bpe() is None,
                    reason="open_clip_torch (which ships CLIP's BPE vocabulary) is not installed")
def test_sd15_tokenizer_from_open_clip_is_clips(tmp_path):
    from transformers import CLIPTokenizer

    from lego_core.importers.sd15_files import write_sd15_tokenizer

    write_sd15_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# -- the diffusion checkpoint ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authors_ckpt(tmp_path_factory):
    """A tiny LEGO pipeline, and its weights written as the authors' Lightning .ckpt (CompVis names,
    EMA weights as LitEma's dot-less buffers, hyper-parameters that need a full unpickle)."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.importers import compvis
    from lego_core.kit import make_tiny_instruct_pix2pix

    d = tmp_path_factory.mktemp("ckpt")
    base = make_tiny_instruct_pix2pix(d / "base")
    pipe = build_from_pretrained(base, conditioning="description+joint", vllm=VLLM_DIM)
    torch.manual_seed(1)
    with torch.no_grad():          # a trained-looking conv_in (the new channels not zero) and UNet
        pipe.unet.conv_in.weight.normal_(0, 0.1)
    raw = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    state = compvis.to_compvis(unet=raw, unet_config=pipe.unet.config, vae=pipe.vae.state_dict(),
                               vae_config=pipe.vae.config, text_encoder=pipe.text_encoder.state_dict(),
                               conditioner=pipe.conditioner.state_dict(), ema_unet=ema)
    state["betas"] = torch.linspace(0.00085, 0.012, 1000)           # LatentDiffusion's schedule buffers
    assert state[compvis.UNET_PREFIX + "input_blocks.0.0.weight"].shape[1] == 8
    lightning = {"state_dict": state, "epoch": 3, "global_step": 1200,
                 "hyper_parameters": argparse.Namespace(base_learning_rate=1e-4)}
    torch.save(lightning, d / "lightning.ckpt")
    torch.save({"state_dict": state}, d / "plain.ckpt")
    return dict(dir=d, base=base, pipe=pipe, raw=raw, ema=ema, state=state)


def _generate(pipe):
    image = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8"))
    g = torch.Generator().manual_seed(0)
    hi, ht = torch.randn(1, 16, VLLM_DIM, generator=g), torch.randn(1, 5, VLLM_DIM, generator=g)
    return pipe("cut onion", image, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np", vllm_image_embeds=hi, vllm_text_embeds=ht).images


def test_import_checkpoint_matches_the_model_it_was_made_from(authors_ckpt, tmp_path):
    from lego_core.diffusion.build import load_pipeline

    c = authors_ckpt
    ckpt = c["dir"] / "lightning.ckpt"
    result = run_cli("import", "checkpoint", ckpt, "--out", tmp_path / "m", "--base", c["base"])
    assert result.exit_code == 2
    assert "--trust-pickle" in _err_line(result) and "argparse.Namespace" in result.stderr
    assert not (tmp_path / "m").exists()

    result = run_cli("import", "checkpoint", ckpt, "--out", tmp_path / "m", "--base", c["base"], "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert "unet: ema weights" in result.stdout and "never given to the optimizer" in result.stdout
    imported = load_pipeline(tmp_path / "m")
    assert imported.conditioner.config.conditioning == "description+joint"
    assert imported.conditioner.config.vllm_dim == VLLM_DIM and imported.unet.config.in_channels == 8
    record = json.loads((tmp_path / "m" / "import.json").read_text())
    assert record["unet_weights"] == "ema" and record["ignored_keys"] == 1

    pipe = c["pipe"]
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.conditioner):
        m.eval()
    pipe.unet.load_state_dict(c["ema"])
    np.testing.assert_array_equal(_generate(imported), _generate(pipe))

    # --no-ema: the raw weights; a tensors-only file needs no --trust-pickle
    result = run_cli("import", "checkpoint", c["dir"] / "plain.ckpt", "--out", tmp_path / "raw", "--base", c["base"],
                     "--no-ema", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loaded_with"] == "weights_only"
    pipe.unet.load_state_dict(c["raw"])
    np.testing.assert_array_equal(_generate(load_pipeline(tmp_path / "raw")), _generate(pipe))

    result = run_cli("import", "checkpoint", c["dir"] / "plain.ckpt", "--out", tmp_path / "raw", "--base", c["base"])
    assert result.exit_code == 2 and "--overwrite" in _err_line(result)


def test_imported_checkpoint_records_generate_defaults_in_lego_json(authors_ckpt, tmp_path):
    """lego.json, as `lego train`'s export writes it: `lego generate` on the imported folder defaults
    to the resolution and steps recorded there (the authors' 256 px / 100 steps unless told)."""
    from lego_core.diffusion.generate import ActionFrameGenerator, Request

    c = authors_ckpt
    result = run_cli("import", "checkpoint", c["dir"] / "plain.ckpt", "--out", tmp_path / "m", "--base", c["base"])
    assert result.exit_code == 0, result.output
    assert "generate defaults (lego.json): 256 px, 100 steps" in result.stdout
    info = json.loads((tmp_path / "m" / "lego.json").read_text())
    assert (info["resolution"], info["validation_steps"], info["conditioning"]) == (256, 100, "description+joint")

    result = run_cli("import", "checkpoint", c["dir"] / "plain.ckpt", "--out", tmp_path / "m64", "--base", c["base"],
                     "--resolution", "64", "--steps", "2")
    assert result.exit_code == 0, result.output
    generator = ActionFrameGenerator(str(tmp_path / "m64"), embeddings_given=True)
    assert (generator.size, generator.steps) == (64, 2)
    frame = Image.fromarray((np.random.RandomState(0).rand(40, 80, 3) * 255).astype("uint8"))
    out = list(generator.run([Request(frame, "cut onion", image_embeds=np.zeros((16, VLLM_DIM), np.float32),
                                      text_embeds=np.zeros((5, VLLM_DIM), np.float32))]))
    assert min(out[0].images[0].size) == 64

    bad = run_cli("import", "checkpoint", c["dir"] / "plain.ckpt", "--out", tmp_path / "bad", "--base", c["base"],
                  "--resolution", "100")
    assert bad.exit_code == 2 and "multiple of 8" in _err_line(bad)


def test_import_checkpoint_bad_files_exit_2_with_one_line(authors_ckpt, tmp_path):
    c = authors_ckpt
    good = (c["dir"] / "plain.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.ckpt").write_text("these are my notes, not weights\n")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, tmp_path / "wrong.ckpt")
    missing = {k: v for k, v in c["state"].items() if "output_blocks.1." not in k and not k.startswith("model_ema")}
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    bad_shape = dict(c["state"])
    bad_shape["first_stage_model.encoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad_shape, tmp_path / "shape.ckpt")
    cases = {
        "truncated.ckpt": "truncated or corrupt",
        "notes.ckpt": "not a PyTorch checkpoint",
        "wrong.ckpt": "not a CompVis/LDM",
        "missing.ckpt": "UNet weights missing",
        "shape.ckpt": "has shape [3, 3, 3, 3]",
        "absent.ckpt": "checkpoint not found",
    }
    for name, expected in cases.items():
        result = run_cli("import", "checkpoint", tmp_path / name, "--out", tmp_path / f"out-{name}", "--base",
                         c["base"])
        assert result.exit_code == 2, (name, result.output)
        assert expected in _err_line(result), (name, result.stderr)
        assert not (tmp_path / f"out-{name}").exists()


# -- the VLLM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_llava(tmp_path_factory):
    """A tiny LLaVA v1 in the original layout: Llama weights + model.mm_projector (one linear layer),
    the CLIP tower in its own folder named by config.json, a Llama tokenizer without <image>."""
    from lego_core.kit.original_llava import make_tiny_original_llava

    return make_tiny_original_llava(tmp_path_factory.mktemp("llava"))


def _reference_llava_v1(c, input_ids, pixel_values, image_token_id, max_new_tokens):
    """The original LLaVA v1 computation: CLIP layer -2, patch tokens (CLS dropped), one linear layer,
    spliced into the Llama input embeddings where the image goes; greedy decoding."""
    ids = input_ids[0]
    where = (ids == image_token_id).nonzero()[:, 0]
    with torch.no_grad():
        feats = c["tower"](pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = c["projector"](feats)[0]
        embed = c["llm"].get_input_embeddings()
        embeds = torch.cat([embed(ids[: where[0]]), feats, embed(ids[where[-1] + 1:])])[None]
        out = c["llm"](inputs_embeds=embeds)
        gen = c["llm"].generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False)
    return out.logits[0, -1], gen[0]


def test_import_vllm_generates_what_the_original_does(original_llava, tmp_path):
    from lego_core.vllm.linear_llava import LlavaLinearProjectorForConditionalGeneration
    from lego_core.vllm.describe import describe_and_embed
    from lego_core.vllm.load import load_vllm
    from lego_core.vllm.prompting import build_prompt

    c = original_llava
    result = run_cli("import", "vllm", c["src"], "--out", tmp_path / "llava", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "projector: linear" in result.stdout and "llava_llama_2" in result.stdout
    model, processor = load_vllm(tmp_path / "llava", device="cpu", dtype="float32")
    assert isinstance(model, LlavaLinearProjectorForConditionalGeneration)

    image = Image.fromarray((np.random.RandomState(1).rand(40, 48, 3) * 255).astype("uint8"))
    prompt = build_prompt(processor, "How do I cut onion here?")
    assert prompt.startswith("[INST] <<SYS>>\n") and prompt.endswith("<image>\nHow do I cut onion here? [/INST]")
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 16     # 4x4 patches, no CLS
    ref_logits, ref_ids = _reference_llava_v1(c, inputs["input_ids"], inputs["pixel_values"],
                                              model.config.image_token_index, 10)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    torch.testing.assert_close(logits[:1000], ref_logits, rtol=1e-5, atol=1e-5)
    assert logits[1000:].eq(0).all()                                # the added <image> row
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ref_ids.tolist()

    # the enrich path (projector hook, H_i rows) works on the imported model
    (res,) = describe_and_embed(model, processor, [image], ["cut onion"], greedy=True, max_new_tokens=3)
    assert res.image_embeds.shape == (16, 64) and res.text_embeds.shape[1] == 64
    # ... asking the authors' question in their llava_llama_2 conversation, word for word
    from lego_core.importers.llava_chat import LLAVA_LLAMA_2_SYSTEM

    assert res.question == "How does the person properly cut onion that is displayed in the video frame?"
    assert build_prompt(processor, res.question) == (f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n<image>\n"
                                                     f"{res.question} [/INST]")


def _tokenizer_image_token(prompt, tokenizer, image_id, n_image):
    """The ids the original LLaVA gives `prompt`: `tokenizer_image_token` (llava/mm_utils.py) splits it
    at '<image>' and tokenizes each chunk as a fresh string (the BOS of later chunks dropped), with the
    slow legacy SentencePiece tokenizer of transformers 4.31: the text is split at the special tokens
    and each piece encoded by SentencePiece, whose dummy prefix starts it with '▁'. Emulated here
    with `tokenizer`'s vocabulary and merges; the image stands for its `n_image` features."""
    import re

    from tokenizers import Tokenizer, pre_tokenizers

    sp = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    specials = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<unk>")}

    def fresh(chunk):                   # tokenizer(chunk).input_ids
        ids = [tokenizer.bos_token_id]
        for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", chunk):
            if piece in specials:
                ids.append(specials[piece])
            elif piece:
                ids += sp.encode("▁" + piece, add_special_tokens=False).ids    # SentencePiece's dummy prefix
        return ids

    chunks = [fresh(c) for c in prompt.split("<image>")]
    ids = chunks[0][:1]
    for i, chunk in enumerate(chunks):
        ids += ([image_id] * n_image if i else []) + chunk[1:]
    return ids


def test_import_vllm_prompts_tokenize_as_llava_tokenizer_image_token(original_llava, tmp_path):
    """The imported processor's input ids are the original's: the '▁' SentencePiece puts at the start
    of the chunk after the image (and after '</s><s>' in a multi-turn conversation) is kept."""
    from lego_core.importers.llava_chat import LLAVA_LLAMA_2_SYSTEM, LLAVA_V1_SYSTEM, LLAVA_V1_TEMPLATE
    from lego_core.vllm.load import load_vllm
    from lego_core.vllm.prompting import build_prompt

    result = run_cli("import", "vllm", original_llava["src"], "--out", tmp_path / "llava", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "llava" / "tokenizer_config.json").read_text())["legacy"] is True
    _, processor = load_vllm(tmp_path / "llava", device="cpu", dtype="float32")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    image = Image.fromarray((np.random.RandomState(2).rand(32, 32, 3) * 255).astype("uint8"))
    q1, a1, q2 = "How do I cut onion here?", "Hold the knife firmly and slice.", "And then?"
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q1}]},
             {"role": "assistant", "content": [{"type": "text", "text": a1}]},
             {"role": "user", "content": [{"type": "text", "text": q2}]}]
    prompts = {   # what LLaVA's conv_llava_llama_2 / conv_vicuna_v1 `get_prompt()` give
        "one turn": (build_prompt(processor, q1),
                     f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n<image>\n{q1} [/INST]"),
        "multi-turn": (processor.apply_chat_template(turns, add_generation_prompt=True),
                       f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n<image>\n{q1} [/INST] {a1} </s>"
                       f"<s>[INST] {q2} [/INST]"),
        "llava_v1 multi-turn": (processor.apply_chat_template(turns, add_generation_prompt=True,
                                                              chat_template=LLAVA_V1_TEMPLATE),
                                f"{LLAVA_V1_SYSTEM} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:"),
    }
    for name, (prompt, llava_prompt) in prompts.items():
        assert prompt == llava_prompt, name
        ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        assert ids == _tokenizer_image_token(prompt, tok, image_id, 16), name
        after = len(ids) - ids[::-1].index(image_id)
        assert tok.convert_ids_to_tokens(ids[after:after + 2]) == ["▁", "<0x0A>"], name
        if name != "one turn":      # the text after '</s>' (llava_llama_2: '</s><s>') starts with '▁' too
            nxt = ids.index(tok.eos_token_id) + 1
            nxt += ids[nxt] == tok.bos_token_id
            assert tok.convert_ids_to_tokens(ids[nxt]).startswith("▁"), name


def _llava_variant(c, folder, edit_state, **cfg_changes):
    """A copy of the original-layout folder with its weights passed through `edit_state`."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    for f in c["src"].iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    state = edit_state(load_file(c["src"] / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    cfg = json.loads((c["src"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, **cfg_changes)))
    return folder


def test_import_vllm_tower_weights_in_the_checkpoint(original_llava, tmp_path):
    """A tower saved inside the checkpoint is used when all its tensors fit the named tower; one that
    fits only in part is refused (one line, exit 2) instead of being mixed with the named tower."""
    from lego_core.vllm.load import load_vllm

    c = original_llava
    tuned = {k: v + 0.01 for k, v in c["tower"].state_dict().items()}

    def with_tower(tower):     # the original's names: LlavaMetaModel.vision_tower (CLIPVisionTower).vision_tower
        return lambda state: {**state, **{"model.vision_tower.vision_tower.vision_model." + k: v
                                          for k, v in tower.items()}}

    full = _llava_variant(c, tmp_path / "llava-llama-2-full", with_tower(tuned))
    result = run_cli("import", "vllm", full, "--out", tmp_path / "out", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert f"taken from the LLaVA checkpoint (all {len(tuned)} tensors)" in result.stdout
    model, _ = load_vllm(tmp_path / "out", device="cpu", dtype="float32")
    for k, v in model.model.vision_tower.state_dict().items():
        torch.testing.assert_close(v, tuned[k], rtol=0, atol=0)

    part = dict(list(tuned.items())[:-1])
    partial = _llava_variant(c, tmp_path / "llava-llama-2-part", with_tower(part))
    result = run_cli("import", "vllm", partial, "--out", tmp_path / "out2")
    assert result.exit_code == 2
    assert f"{len(part)} of its {len(tuned)} tensors match" in _err_line(result)
    assert not (tmp_path / "out2").exists()


def test_import_vllm_padded_embedding_matrix(original_llava, tmp_path):
    """Embeddings padded past the tokenizer (1008 rows, 1000 tokens): '<image>' takes padding row 1000,
    which no real token uses; nothing is added or suppressed, and the logits are the original's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lego_core.vllm.load import load_vllm
    from lego_core.vllm.prompting import build_prompt

    c = original_llava
    torch.manual_seed(3)
    pad = {k: torch.randn(8, 64) for k in ("model.embed_tokens.weight", "lm_head.weight")}
    src = _llava_variant(c, tmp_path / "llava-llama-2-padded",
                         lambda s: {**s, **{k: torch.cat([s[k], pad[k]]) for k in pad}}, vocab_size=1008)
    result = run_cli("import", "vllm", src, "--out", tmp_path / "out", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["image_token_id"] == 1000 and summary["vocab_added"] == 0
    assert any("padding row" in n for n in summary["notes"])
    model, processor = load_vllm(tmp_path / "out", device="cpu", dtype="float32")
    assert model.config.text_config.vocab_size == 1008 and not model.generation_config.suppress_tokens

    llm = LlamaForCausalLM(LlamaConfig(**{**c["llm"].config.to_dict(), "vocab_size": 1008})).eval()
    llm.load_state_dict({k: torch.cat([v, pad[k]]) if k in pad else v for k, v in c["llm"].state_dict().items()})
    image = Image.fromarray((np.random.RandomState(4).rand(32, 32, 3) * 255).astype("uint8"))
    inputs = processor(images=[image], text=[build_prompt(processor, "What next?")], return_tensors="pt")
    ref_logits, ref_ids = _reference_llava_v1(dict(c, llm=llm), inputs["input_ids"], inputs["pixel_values"], 1000, 5)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ref_ids.tolist()


def test_import_vllm_bad_folders_exit_2(original_llava, tmp_path):
    (tmp_path / "notllava").mkdir()
    (tmp_path / "notllava" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    result = run_cli("import", "vllm", tmp_path / "notllava", "--out", tmp_path / "o1")
    assert result.exit_code == 2 and "mm_vision_tower" in _err_line(result)
    result = run_cli("import", "vllm", tmp_path / "nothing", "--out", tmp_path / "o2")
    assert result.exit_code == 2 and "no config.json" in _err_line(result)
    cfg = json.loads((original_llava["src"] / "config.json").read_text())
    bad = tmp_path / "badtower"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(dict(cfg, mm_vision_tower="openai/not-in-any-cache")))
    for f in original_llava["src"].iterdir():
        if f.name != "config.json":
            (bad / f.name).write_bytes(f.read_bytes())
    result = run_cli("import", "vllm", bad, "--out", tmp_path / "o3")
    assert result.exit_code == 2 and "--vision-tower" in _err_line(result)


# -- the dataset ------------------------------------------------------------------------------------


def _jpeg(seed: int, size=(48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")).save(buf, "JPEG")
    return buf.getvalue()


def test_import_dataset_in_the_authors_layout(tmp_path):
    root, feats = tmp_path / "LEGO_Data", tmp_path / "vllm_features"
    ego = {"clipA": {"0": {"image_0": "clipA/0_pre.jpg", "image_1": "clipA/0_pnr.jpg", "action": "#C C cuts the onion",
                           "llava_forecast_finetune": "The right hand slices the onion with a knife."},
                     "1": {"image_0": "clipA/1_pre.jpg", "image_1": "clipA/1_pnr.jpg",
                           "action": "#C C opens the fridge",
                           "llava_forecast_finetune": "The left hand pulls the fridge door open."}},
           "clipB": {"7": {"image_0": "clipB/7_pre.jpg", "image_1": "clipB/missing.jpg",
                           "action": "#C C washes a plate",
                           "llava_forecast_finetune": "Both hands rub the plate under the tap."}}}
    epic = {"P01_11": {"P01_11_3": {"image_0": "P01_11/3_a.jpg", "image_1": "P01_11/3_b.jpg", "action": "open drawer",
                                    "llava_forecast_finetune": "The hand pulls the drawer handle."}}}
    root.mkdir()
    (root / "ego4d_val.json").write_text(json.dumps(ego))
    (root / "epickitchen_val.json").write_text(json.dumps(epic))
    written = {}
    for name, folder, data, model in (("ego4d", "ego4d.fho", ego, "llava-ckpt450"),
                                      ("epickitchen", "epickitchen", epic, "llava")):
        for clip in data.values():
            for i, entry in enumerate(clip.values()):
                for j, rel in enumerate((entry["image_0"], entry["image_1"])):
                    if "missing" in rel:
                        continue
                    path = root / "EgoGen" / folder / "val" / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_jpeg(len(written)))
                    written[rel] = path.read_bytes()
                rel = Path(entry["image_0"]).with_suffix(".npy")
                for kind, arr in (("image", np.random.rand(16, 8).astype(np.float16)),
                                  ("text", np.random.rand(3 + i, 2, 8).astype(np.float32) if name == "ego4d"
                                   else np.random.rand(5, 8).astype(np.float16))):
                    p = feats / name / f"vllm_{kind}_feature" / model / "val" / rel
                    p.parent.mkdir(parents=True, exist_ok=True)
                    np.save(p, arr)
    out = tmp_path / "shards" / "lego-val-%06d.tar"
    result = run_cli("import", "dataset", root, "--split", "val", "--features", feats, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 3 and summary["skipped"] == {"frame missing": 1}

    report = run_cli("inspect", tmp_path / "shards", "--json", "--strict", "--full")
    assert report.exit_code == 0, report.output
    info = json.loads(report.stdout)
    assert info["samples"] == info["valid"] == 3

    samples = {}
    with tarfile.open(tmp_path / "shards" / "lego-val-000000.tar") as tar:
        for m in tar.getmembers():
            key, field = m.name.split(".", 1)
            samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    s = samples["ego4d-clipA-0"]
    meta = json.loads(s["meta.json"])
    assert meta["label"] == "cut onion" and meta["narration"] == "#C C cuts the onion"
    assert meta["question_action"] == "cut the onion"             # their VLLM question's wording
    assert meta["width"] == 48 and meta["height"] == 32
    assert s["input.jpg"] == written["clipA/0_pre.jpg"] and s["target.jpg"] == written["clipA/0_pnr.jpg"]
    assert s["enriched.txt"].decode() == "The right hand slices the onion with a knife."
    img, txt = np.load(io.BytesIO(s["vllm_img.npy"])), np.load(io.BytesIO(s["vllm_txt.npy"]))
    assert img.shape == (16, 8) and img.dtype == np.float16
    assert txt.shape == (3, 8) and txt.dtype == np.float16          # (n, layers, D): the last layer kept
    epic_meta = json.loads(samples["epic-kitchens-P01_11-P01_11_3"]["meta.json"])
    assert epic_meta["dataset"] == "epic-kitchens" and epic_meta["label"] == "open drawer"
    assert epic_meta["question_action"] == "open drawer"

    again = run_cli("import", "dataset", root, "--split", "val", "--features", feats, "--out", out, "--json")
    assert json.loads(again.stdout)["already_done"] == 3 and json.loads(again.stdout)["written"] == 0

    result = run_cli("import", "dataset", root, "--split", "train", "--out", tmp_path / "t-%06d.tar")
    assert result.exit_code == 2 and "ego4d_train.json" in _err_line(result)
