"""Tiny random models in Hugging Face folder layouts, built fully offline.

Every model class the toolkit loads, at toy size, saved the way the real ones are saved, so tests,
the bundled demo and benchmarks load them through the same `from_pretrained` calls as production:

- `make_tiny_sd(folder)`: SD-1.5 pipeline folder (`StableDiffusionPipeline.from_pretrained`).
- `make_tiny_instruct_pix2pix(folder)`: InstructPix2Pix folder (8-channel UNet input).
- `make_tiny_llava(folder)`: LLaVA-1.5 folder (`LlavaForConditionalGeneration` + `AutoProcessor`).
- `make_sd15_random(folder)`, `make_llava_real_width(folder)`: the same classes at the paper's real
  sizes (SD-1.5; LLaVA at Llama-2-13B's widths, 2 layers), random weights, for real-size runs.
- `make_clip_tokenizer(folder)`, `make_llama_tokenizer(folder)`: the tokenizers alone.
- `llava_align.WORLD_LLAVA`: the one trained model the kit ships, a tiny LLaVA aligned to the demo's
  world (`llava_align.align_world_llava`, `scripts/align_llava.py`): the demo's stand-in for LLaVA-1.5.

Same seed → same weights. Importing this package is cheap: torch, diffusers and transformers are
imported inside the functions.
"""

from .llava import LLAVA_CHAT_TEMPLATE, LLAVA_REAL_WIDTH, make_llava_real_width, make_tiny_llava, tiny_llava
from .sd import (
    SD15_SIZES,
    make_sd15_random,
    make_tiny_instruct_pix2pix,
    make_tiny_sd,
    tiny_sd_components,
    vae_scale_factor,
)
from .tokenizers import IMAGE_TOKEN, corpus, make_clip_tokenizer, make_llama_tokenizer

__all__ = [
    "IMAGE_TOKEN",
    "LLAVA_CHAT_TEMPLATE",
    "LLAVA_REAL_WIDTH",
    "SD15_SIZES",
    "corpus",
    "make_clip_tokenizer",
    "make_llama_tokenizer",
    "make_llava_real_width",
    "make_sd15_random",
    "make_tiny_instruct_pix2pix",
    "make_tiny_llava",
    "make_tiny_sd",
    "tiny_llava",
    "tiny_sd_components",
    "vae_scale_factor",
]
