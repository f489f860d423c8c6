"""Benchmark: tokens/s of `lego tune-vllm`'s training step (forward + backward + DeepSpeed step),
the same code path as the command: `encode_example` / `collate_examples` batches, the vision tower
frozen, activation checkpointing, a config from `engine.config.deepspeed_config`.

    .venv/bin/python scripts/bench/tune_vllm.py                         # tiny LLaVA on the CPU
    .venv/bin/python scripts/bench/tune_vllm.py --size 7b --zero 3 --precision bf16 --offload-optimizer

`--size 7b` builds a randomly initialised LLaVA-1.5-7B-sized model (CLIP ViT-L/14-336 + a
Llama-7B-sized LM, 576 image tokens) straight into ZeRO-3 partitions (needs a GPU; with the
optimizer offloaded its AdamW states, ~112 GB, live in CPU memory). Prints tokens/s (all tokens of
the padded batch that are attended, image tokens included), answer tokens/s, s/step and the peak
GPU memory / CPU RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def build(size: str, dtype):
    """(model, processor) for the benchmark."""
    from lego_core.kit import tiny_llava

    model, processor = tiny_llava()
    if size == "tiny":
        return model.to(dtype), processor
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    # the processor of the tiny kit, re-told the 7B geometry (336 px, patch 14 -> 576 image tokens)
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    processor = LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                               patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=processor.chat_template, image_token=processor.image_token)
    tok = processor.tokenizer
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                              num_hidden_layers=24, num_attention_heads=16, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids(processor.image_token), image_seq_length=576,
                         vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    return LlavaForConditionalGeneration._from_config(config, dtype=dtype), processor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--answer-words", type=int, default=60, help="Length of the synthetic curated answer.")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-params", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true")
    args = ap.parse_args()

    import deepspeed
    from PIL import Image

    from lego_core.engine.config import EngineOptions, deepspeed_config, precision_dtype
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown
    from lego_core.vllm.templates import tuning_question
    from lego_core.vllm.tune import (TuneConfig, _optimizer, collate_examples, enable_checkpointing, encode_example,
                                     freeze_vision_tower)

    device, _ = init_distributed(detect_launch({}))
    opts = EngineOptions(micro_batch=args.batch, grad_accum=1, zero_stage=args.zero, precision=args.precision,
                         offload_optimizer=args.offload_optimizer, offload_params=args.offload_params)
    ds_config = deepspeed_config(opts, 1)
    dtype = precision_dtype(ds_config)
    torch.manual_seed(0)
    t_build = time.perf_counter()
    if args.size == "7b" and args.zero == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - random init straight into partitions
    model, processor = build(args.size, dtype)
    build_s = time.perf_counter() - t_build
    model.config.use_cache = False
    params = freeze_vision_tower(model)
    if not args.no_checkpointing:
        enable_checkpointing(model)
    cfg = TuneConfig(shards=[], vllm="", out="")
    optimizer = _optimizer(params, cfg, ds_config)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, model_parameters=params)

    words = ("hold the onion with the left hand and cut it into thin slices with the knife in the right "
             "hand while the board stays still on the counter").split()
    answer = " ".join(words[i % len(words)] for i in range(args.answer_words)).capitalize() + "."
    rng = torch.Generator().manual_seed(0)
    examples = []
    for i in range(args.batch):
        pixels = (torch.rand(64, 64, 3, generator=rng) * 255).to(torch.uint8).numpy()
        examples.append(encode_example(processor, Image.fromarray(pixels), tuning_question("cut onion", i), answer))
    batch = collate_examples(examples, processor.tokenizer.pad_token_id)
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    tokens = int(batch["attention_mask"].sum())
    answer_tokens = int((batch["labels"] != -100).sum())

    engine.train()
    times = []
    for i in range(args.warmup + args.steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    result = {
        "size": args.size, "params": n_params, "device": str(engine.device), "zero": args.zero,
        "precision": str(dtype).replace("torch.", ""), "offload_optimizer": args.offload_optimizer,
        "offload_params": args.offload_params, "checkpointing": not args.no_checkpointing,
        "batch": args.batch, "seq_len": int(batch["input_ids"].shape[1]), "tokens_per_step": tokens,
        "answer_tokens_per_step": answer_tokens, "s_per_step": round(step, 4),
        "tokens_per_s": round(tokens / step, 1), "answer_tokens_per_s": round(answer_tokens / step, 1),
        "build_s": round(build_s, 1), "loss": round(loss.item(), 4),
        "peak_cpu_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
    }
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    print(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    main()
