"""The VLLM: a transformers LLaVA that describes how to do an action in the pictured scene.

- `load.load_vllm(name_or_folder, device=, dtype=)` -> (model, processor), any
  `LlavaForConditionalGeneration` folder or hub id.
- `templates`: the ten tuning question templates (a seeded random one per tuning step), the
  authors' inference question (or `--question`'s) and `action_text`, the label as the questions use it.
- `prompting.build_prompt(processor, question)`: the chat template when the model has one, the
  LLaVA-1.5 conversation format otherwise.
- `describe.describe_and_embed(model, processor, images, labels, ...)`: per sample the description
  R, the image embedding H_i and the text embedding H_t (float16), batched with left padding.
- `enrich.enrich(EnrichConfig)`: the `lego enrich` stage over shards; `enrich_plan` its bookkeeping
  (the SLURM split, the manifest, the rejects).

Importing this package is cheap: torch and transformers are imported inside the functions.
"""

from lego_core.vllm.templates import (INFERENCE_QUESTION, QUESTION_TEMPLATES, action_text, inference_question,
                                      tuning_question)

__all__ = [
    "INFERENCE_QUESTION",
    "QUESTION_TEMPLATES",
    "action_text",
    "inference_question",
    "tuning_question",
]
