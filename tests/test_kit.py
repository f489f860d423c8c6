"""The tiny-model kit: every folder is built in a temp dir and loaded back exactly as production
code loads real models (`from_pretrained` on the folder / subfolder), then exercised."""

from __future__ import annotations


import pytest

from lego_core.kit import (
    make_clip_tokenizer,
    make_llama_tokenizer,
    make_tiny_instruct_pix2pix,
    make_tiny_llava,
    make_tiny_sd,
    tiny_sd_components,
    vae_scale_factor,
)

SENTENCE = "The person is cutting the onion with a knife on the chopping board."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine thread oversubscription
    made this module 2-3x slower; restored afterwards so other modules are unaffected."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_differ(a: dict, b: dict) -> bool:
    """Every randomly initialised tensor differs (constant ones — norms, biases — may match)."""
    import torch

    varied = [k for k in a if a[k].numel() > 1 and a[k].float().std() > 0]
    return bool(varied) and all(not torch.equal(a[k], b[k]) for k in varied)


# ---------------------------------------------------------------------------------- tokenizers


def test_clip_tokenizer_round_trip(tmp_path):
    from transformers import CLIPTokenizer

    tok = make_clip_tokenizer(tmp_path / "clip")
    again = CLIPTokenizer.from_pretrained(tmp_path / "clip")
    assert isinstance(tok, CLIPTokenizer) and len(tok) == 1000
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    # CLIP layout: eos has the largest id, so CLIPTextModel's argmax pooling finds it.
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2

    enc = tok(SENTENCE, padding="max_length", max_length=tok.model_max_length, truncation=True)
    ids = enc.input_ids
    assert tok.model_max_length == 77 and len(ids) == 77
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.pad_token_id
    n = sum(enc.attention_mask)
    assert ids[n - 1] == tok.eos_token_id
    words = tok.convert_ids_to_tokens(ids[1 : n - 1])
    assert words[:4] == ["the</w>", "person</w>", "is</w>", "cutting</w>"]  # real sub-words, not bytes
    assert n < 20
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE.lower().replace(".", " .")
    assert again(SENTENCE).input_ids == tok(SENTENCE).input_ids

    # byte-level: unseen characters become bytes, never unk (= eos for CLIP)
    odd = tok("Ünïcödé 東京 ☕", add_special_tokens=False).input_ids
    assert odd and tok.unk_token_id not in odd
    assert tok.decode(odd) == "ünïcödé 東京 ☕"


def test_clip_tokenizer_loads_from_vocab_and_merges_alone(tmp_path):
    """SD-1.5's tokenizer folder ships vocab.json + merges.txt, no tokenizer.json."""
    from transformers import CLIPTokenizer

    tok = make_clip_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    legacy = CLIPTokenizer.from_pretrained(tmp_path)
    text = SENTENCE + " Ünï 東京!"
    assert legacy(text).input_ids == tok(text).input_ids
    assert len(legacy) == len(tok) and legacy.model_max_length == 77


def test_llama_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = make_llama_tokenizer(tmp_path / "llama")
    again = AutoTokenizer.from_pretrained(tmp_path / "llama")
    assert len(tok) == 1002
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 1000
    assert tok.image_token == "<image>" and tok.convert_tokens_to_ids("<image>") == 1001
    assert tok.padding_side == "left"

    ids = tok(SENTENCE).input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert len(ids) < 20  # whole words, not characters
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE
    odd = "Ünïcödé 東京 ☕ {x: 1}"
    assert tok.decode(tok(odd).input_ids, skip_special_tokens=True) == odd  # byte fallback
    assert tok.unk_token_id not in tok(odd).input_ids
    assert tok("a <image> b", add_special_tokens=False).input_ids.count(1001) == 1
    assert again(SENTENCE).input_ids == ids

    batch = tok(["hi", SENTENCE], padding=True)
    assert batch.input_ids[0][0] == tok.pad_token_id and batch.attention_mask[0][0] == 0
    assert batch.attention_mask[1] == [1] * len(batch.attention_mask[1])


def test_bpe_training_is_deterministic():
    from tokenizers import pre_tokenizers

    from lego_core.kit.tokenizers import _word_counts, train_bpe

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    words = _word_counts(metaspace.pre_tokenize_str)
    merges = train_bpe(words, 300)
    shuffled = dict(sorted(words.items(), key=lambda kv: (kv[1], kv[0][::-1])))
    assert train_bpe(shuffled, 300) == merges and len(merges) == 300
    assert ("▁t", "he") in merges or ("▁th", "e") in merges


# ---------------------------------------------------------------------------- stable diffusion


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("kit") / "sd", sample_size=8)


def test_sd_folder_layout_and_components(sd_folder):
    import json

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert not list(sd_folder.rglob("*.bin"))
    for sub in ("unet", "vae", "text_encoder"):
        assert list((sd_folder / sub).glob("*.safetensors"))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):  # SD-1.5 layout + transformers 5.x
        assert (sd_folder / "tokenizer" / name).is_file()

    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(sd_folder, subfolder="tokenizer")
    scheduler = PNDMScheduler.from_pretrained(sd_folder, subfolder="scheduler")

    assert unet.config.in_channels == 4 and unet.config.sample_size == 8
    assert unet.config.down_block_types == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 32
    assert text_encoder.config.vocab_size == len(tokenizer)
    assert text_encoder.config.max_position_embeddings == tokenizer.model_max_length == 77
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.skip_prk_steps
    assert sum(p.numel() for p in unet.parameters()) < 2_000_000

    import torch

    ids = tokenizer([SENTENCE], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = text_encoder(ids)[0]
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
        eps = unet(latents, 10, encoder_hidden_states=cond).sample
    assert cond.shape == (1, 77, 32)
    assert latents.shape == (1, 4, 8, 8) and eps.shape == latents.shape


def test_sd_pipeline_generates(sd_folder):
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == vae_scale_factor() == 8
    out = pipe(SENTENCE, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    image = out.images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()  # sample_size × 8
    assert image.std() > 0


def test_instruct_pix2pix_pipeline_generates(tmp_path):
    import numpy as np
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    # ×2 VAE (2 blocks) here, to cover the small-image configuration too.
    folder = make_tiny_instruct_pix2pix(tmp_path / "ip2p", sample_size=8, vae_block_out_channels=(32, 64))
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 8 and pipe.vae_scale_factor == 2
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    x = Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype("uint8"))
    out = pipe(
        "cut onion", image=x, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil"
    )
    assert out.images[0].size == (32, 24)


def test_sd_weights_follow_the_seed(tmp_path):
    small = dict(sample_size=8, vae_block_out_channels=(8, 16))
    a = make_tiny_sd(tmp_path / "a", seed=3, **small)
    b = make_tiny_sd(tmp_path / "b", seed=3, **small)
    c = make_tiny_sd(tmp_path / "c", seed=4, **small)
    for sub, name in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ]:
        ta, tb, tc = (_tensors(f / sub / name) for f in (a, b, c))
        assert _same(ta, tb), sub
        assert _all_differ(ta, tc), sub


def test_bigger_variant_builds():
    parts = tiny_sd_components(
        unet_block_out_channels=(32, 32, 64, 64), layers_per_block=2, cross_attention_dim=64,
        vae_block_out_channels=(8, 16, 16, 16), text_layers=3, sample_size=8,
    )
    unet, te = parts["unet"], parts["text_encoder"]
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(unet.config.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet.config.layers_per_block == 2 and unet.config.cross_attention_dim == 64
    assert te.config.num_hidden_layers == 3 and te.config.hidden_size == 64
    assert len(unet.down_blocks[0].resnets) == 2


# ------------------------------------------------------------------------------------- LLaVA


@pytest.fixture(scope="module")
def llava(tiny_llava):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = tiny_llava
    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(folder), folder


def _prompt(processor, question):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _images():
    from PIL import Image

    return [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (40, 40), (0, 100, 10))]


def test_llava_folder_layout(llava):
    import json

    model, processor, folder = llava
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["image_token_index"] == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert type(processor).__name__ == "LlavaProcessor"
    assert processor.num_additional_image_tokens == 1 and processor.patch_size == 8


def test_llava_chat_template(llava):
    _, processor, _ = llava
    assert _prompt(processor, "What next?") == "USER: <image>\nWhat next? ASSISTANT:"
    conversation = [
        {"role": "system", "content": "A chat."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The person cuts the onion."}]},
    ]
    text = processor.apply_chat_template(conversation)
    assert text == "A chat. USER: <image>\nDescribe it. ASSISTANT: The person cuts the onion.</s>"
    out = processor.tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert processor.tokenizer.decode(answer) == "The person cuts the onion.</s>"


def test_llava_generate_batched_left_padded(llava):
    import torch

    model, processor, _ = llava
    prompts = [_prompt(processor, "What next?"), _prompt(processor, "Describe the hands and the objects in detail.")]
    inputs = processor(images=_images(), text=prompts, return_tensors="pt", padding=True)
    image_id = model.config.image_token_index
    assert inputs.pixel_values.shape == (2, 3, 32, 32)
    assert (inputs.input_ids == image_id).sum(1).tolist() == [16, 16]  # (32/8)^2 patches, CLS dropped
    mask = inputs.attention_mask
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()  # left padding
    assert (inputs.input_ids[0][mask[0] == 0] == processor.tokenizer.pad_token_id).all()

    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    n = inputs.input_ids.shape[1]
    assert torch.equal(out[:, :n], inputs.input_ids) and 1 <= out.shape[1] - n <= 8

    # padded row == the same prompt run alone: the padding really is masked out
    alone = processor(images=_images()[:1], text=prompts[:1], return_tensors="pt")
    with torch.no_grad():
        batched_logits = model(**inputs).logits[0, -1]
        alone_logits = model(**alone).logits[0, -1]
    assert torch.allclose(batched_logits, alone_logits, atol=1e-4)


def test_llava_image_and_text_embeddings(llava):
    import torch

    model, processor, _ = llava
    inputs = processor(images=_images()[:1], text=[_prompt(processor, "What next?")], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    features = out.image_outputs.pooler_output  # projector output, one row per patch token
    assert len(features) == 1 and features[0].shape == (16, 64)
    assert out.hidden_states[-1].shape == (1, inputs.input_ids.shape[1], 64)

    gen = model.generate(
        **inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_hidden_states=True
    )
    assert gen.hidden_states[1][-1].shape == (1, 1, 64)


def test_llava_weights_follow_the_seed(tmp_path):
    a = _tensors(make_tiny_llava(tmp_path / "a", seed=5) / "model.safetensors")
    b = _tensors(make_tiny_llava(tmp_path / "b", seed=5) / "model.safetensors")
    c = _tensors(make_tiny_llava(tmp_path / "c", seed=6) / "model.safetensors")
    assert _same(a, b)
    assert _all_differ(a, c)


def test_real_size_presets_have_the_papers_shapes():
    """SD15_SIZES and LLAVA_REAL_WIDTH build the released models' parameter counts (built on the meta
    device: shapes only, no memory), so real-size runs measure the real architectures."""
    import torch

    from lego_core.kit import LLAVA_REAL_WIDTH, SD15_SIZES, tiny_llava

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        sd = tiny_sd_components(in_channels=8, **SD15_SIZES)
        llava, _ = tiny_llava(**LLAVA_REAL_WIDTH)
    assert count(sd["unet"]) == 859_532_484           # SD-1.5's 859,520,964 + conv_in's 4 new channels
    assert count(sd["vae"]) == 83_653_863
    assert count(sd["text_encoder"]) == 123_060_480   # CLIP ViT-L/14's text tower
    assert sd["text_encoder"].config.num_attention_heads == 12
    text = llava.config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.intermediate_size) == (5120, 40, 13824)
    assert count(llava.model.vision_tower) == 303_179_776   # CLIP ViT-L/14 vision tower
    assert llava.config.image_seq_length == 256


def test_llava_position_codes_keep_what_and_where_legible():
    """`position_codes=True` (the demo's VLLM): a patch's features say where it is AND what it
    shows — an object appearing in a patch moves its feature at least as far as stepping one patch
    along does (at CLIP's init scale the content was a third of that: the tuned VLLM could not find
    the named object in the frame)."""
    import numpy as np
    import torch
    from PIL import Image

    from lego_core.kit.llava import tiny_llava

    model, processor = tiny_llava(image_size=48, patch_size=8, text_hidden=128, position_codes=True)
    counter = np.full((48, 48, 3), (70, 80, 95), np.uint8)
    onion = counter.copy()
    onion[8:16, 8:16] = (200, 120, 190)                       # patch (1, 1): index 7 of the 6x6 grid
    pixels = processor.image_processor(images=[Image.fromarray(counter), Image.fromarray(onion)],
                                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        f = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    what = (f[1, 7] - f[0, 7]).norm()
    where = (f[0, 7] - f[0, 8]).norm()
    assert where > 1 and what >= where, (float(what), float(where))
