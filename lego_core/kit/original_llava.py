"""A tiny LLaVA v1 in the original (haotian-liu/LLaVA) layout, as the LEGO authors released theirs.

`make_tiny_original_llava(folder)` writes ``folder/llava-llama-2-13b-chat-forecasting-finetune``:
Llama weights plus ``model.mm_projector`` (one linear layer, as their LLaVA-Llama-2 has) in
``model.safetensors``, a Llama tokenizer without ``<image>``, and a config.json naming the CLIP
vision tower by path (``folder/clip-vit-large-patch14``, its own folder with an image processor).
The folder name carries "llama-2", which is how their code (and `lego import vllm`) picks the
``llava_llama_2`` conversation format. What `lego import vllm` reads; same seed → same weights.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_tiny_original_llava(folder: str | Path, *, seed: int = 0) -> dict:
    """Write the tiny original-layout LLaVA; return {"src", "tower_dir"} paths and the modules
    {"tower", "llm", "projector"} it was saved from (for tests that compare against them)."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaTokenizer,
    )

    from .tokenizers import _llama_vocab_merges

    folder = Path(folder)
    src, tower_dir = folder / "llava-llama-2-13b-chat-forecasting-finetune", folder / "clip-vit-large-patch14"
    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, projection_dim=32)).eval()
    tower.save_pretrained(tower_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower_dir)
    vocab, merges = _llama_vocab_merges(1000)
    LlamaTokenizer(vocab=dict(vocab), merges=list(merges), add_bos_token=True).save_pretrained(src)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    llm = LlamaForCausalLM(config).eval()
    projector = torch.nn.Linear(32, 64)
    state = dict(llm.state_dict())
    state["model.mm_projector.weight"] = projector.weight.detach().clone()
    state["model.mm_projector.bias"] = projector.bias.detach().clone()
    save_file({k: v.contiguous() for k, v in state.items()}, src / "model.safetensors")
    cfg = config.to_dict()
    cfg.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava", mm_vision_tower=str(tower_dir),
               mm_hidden_size=32, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
               mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True)
    (src / "config.json").write_text(json.dumps(cfg))
    return dict(src=src, tower_dir=tower_dir, tower=tower, llm=llm, projector=projector)
