"""Tiny random LLaVA-1.5-layout folders, built offline.

`make_tiny_llava(folder)` writes what `LlavaForConditionalGeneration.save_pretrained` +
`LlavaProcessor.save_pretrained` write for llava-hf/llava-1.5-7b-hf, at toy size: a CLIP vision
tower, a 2-layer GELU projector, a Llama LM, a `CLIPImageProcessor` (resize + centre-crop to
`image_size`), a Llama-style BPE tokenizer with `<image>` and `<pad>` as special tokens, and a
LLaVA-1.5 chat template. Production code loads it with `LlavaForConditionalGeneration.from_pretrained`
and `AutoProcessor.from_pretrained`, as it would the real model.

As in LLaVA-1.5: `vision_feature_layer=-2`, `vision_feature_select_strategy="default"` (CLS dropped),
so one image becomes `(image_size // patch_size) ** 2` `<image>` tokens; the processor is told
`num_additional_image_tokens=1` (CLIP's CLS) to count them right. The tokenizer pads on the left,
which batched `generate` needs (a tuner that pads on the right sets `tokenizer.padding_side`).

The chat template renders LLaVA-1.5's conversation format:
    [system + " "]"USER: <image>\\n{question} ASSISTANT: {answer}</s>" ... + "ASSISTANT:" (generation prompt)
Messages may hold a string or a list of `{"type": "image"}` / `{"type": "text", "text": ...}` parts;
the assistant's answer is wrapped in `{% generation %}` so `return_assistant_tokens_mask=True` marks
the answer tokens (answer-only loss).

Weights are random but deterministic: built right after `torch.manual_seed(seed)`.
"""

from __future__ import annotations

from pathlib import Path

from .tokenizers import IMAGE_TOKEN, make_llama_tokenizer

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{% for p in parts | selectattr('type', 'equalto', 'text') %}{{ p['text'] + ' ' }}{% endfor %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' }}{% generation %}"
    "{% for p in parts | selectattr('type', 'equalto', 'text') %}{{ p['text'] }}{% endfor %}"
    "{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for p in parts | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for p in parts | selectattr('type', 'equalto', 'text') %}{{ p['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tiny_llava(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    vocab_size: int = 1000,
    seed: int = 0,
    position_codes: bool = False,
    vision_heads: int | None = None,
    vision_intermediate: int | None = None,
    text_heads: int | None = None,
    text_intermediate: int | None = None,
):
    """The in-memory `(model, processor)` pair that `make_tiny_llava` saves.

    `position_codes`: give the vision tower's patch positions clear 2-D Fourier codes (unit scale)
    instead of random ones at CLIP's init scale (0.02), so its features say *where* a patch is, as a
    pretrained CLIP's do. A random tower hides that under the patch content; the demo's VLLM must
    read where an object is from the frame.
    Heads default to width / 16 and FFN widths to 4 x width; `LLAVA_REAL_WIDTH` names the real ones."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if vision_layers < 2:
        raise ValueError("vision_feature_layer=-2 needs at least 2 vision layers")
    tokenizer = make_llama_tokenizer(vocab_size=vocab_size)
    n_patches = (image_size // patch_size) ** 2
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=vision_intermediate or 4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads or max(1, vision_hidden // 16),
        projection_dim=vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate or 4 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads or max(1, text_hidden // 16),
        num_key_value_heads=text_heads or max(1, text_hidden // 16),
        max_position_embeddings=max(512, 4 * n_patches),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    if position_codes:
        _set_position_codes(model, image_size // patch_size, vision_hidden)
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    return model, processor


# At CLIP's init scale (0.02) a patch's colour moves its feature by a tenth of what the position
# code does (std over frames 0.10 vs ~1 after the pre-norm, measured on the demo's world): what is
# in a patch is then too faint to look up by. Ten times that makes it ~0.4: both legible.
CONTENT_GAIN = 10.0


def _set_position_codes(model, grid: int, width: int) -> None:
    import math

    import torch

    tower = model.model.vision_tower
    embeddings = getattr(tower, "vision_model", tower).embeddings
    emb = embeddings.position_embedding.weight
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    freqs = torch.arange(1, width // 4 + 1, dtype=torch.float32) * math.pi / grid
    codes = torch.cat([torch.sin(rows.flatten()[:, None] * freqs), torch.cos(rows.flatten()[:, None] * freqs),
                       torch.sin(cols.flatten()[:, None] * freqs), torch.cos(cols.flatten()[:, None] * freqs)], 1)
    with torch.no_grad():
        emb.zero_()
        emb[1:, : codes.shape[1]] = codes * math.sqrt(2)       # row 0 is CLS
        embeddings.patch_embedding.weight.mul_(CONTENT_GAIN)


def make_tiny_llava(
    folder: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    vocab_size: int = 1000,
    seed: int = 0,
    position_codes: bool = False,
    **sizes,
) -> Path:
    """Write a tiny random LLaVA-1.5-layout folder (model + processor, safetensors); return its path.

    `vocab_size` is the tokenizer's base vocabulary; `<pad>` and `<image>` come on top
    (`len(processor.tokenizer) == vocab_size + 2` == the model's `text_config.vocab_size`).
    `**sizes`: heads and FFN widths (see `tiny_llava`).
    """
    folder = Path(folder)
    model, processor = tiny_llava(
        image_size=image_size, patch_size=patch_size, vision_hidden=vision_hidden,
        vision_layers=vision_layers, text_hidden=text_hidden, text_layers=text_layers,
        vocab_size=vocab_size, seed=seed, position_codes=position_codes, **sizes,
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


# The paper's VLLM at its real widths, only 2 decoder layers deep: CLIP ViT-L/14 at 224 px (24 layers x
# 1024, 16 heads, FFN 4096; M = 256 image tokens) and Llama-2-13B's widths (hidden 5120, 40 heads,
# FFN 13824). H_i and H_t come out 256 x 5120 and n x 5120, as from the real model. The vocabulary
# stays the kit tokenizer's (1002 tokens, not Llama's 32000): a random model must not generate ids
# the tokenizer cannot decode.
LLAVA_REAL_WIDTH = dict(image_size=224, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                        vision_intermediate=4096, text_hidden=5120, text_layers=2, text_heads=40,
                        text_intermediate=13824)


def make_llava_real_width(folder: str | Path, *, text_layers: int = 2, seed: int = 0) -> Path:
    """A LLaVA folder at the paper's widths with `text_layers` decoder layers, random weights
    (~1.0 B parameters, 4 GB in float32 for 2 layers)."""
    return make_tiny_llava(folder, seed=seed, **{**LLAVA_REAL_WIDTH, "text_layers": text_layers})
