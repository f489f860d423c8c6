"""The VLLM's answer and embeddings for (image, action label) pairs, batched.

`describe_and_embed(model, processor, images, labels, ...)` asks the VLLM the fixed inference
question about each label (`templates.inference_question`) with its image, generates the answer and
returns, per sample, a `VllmOutput`:

- ``description`` — R, the generated answer as text (special tokens and the end token dropped);
- ``image_embeds`` — H_i, (M, D) float16: the multimodal projector's output for the image, one row
  per image token the LLM sees (patch tokens: CLIP's CLS is dropped when the model's
  ``vision_feature_select_strategy`` is "default", as in LLaVA-1.5);
- ``text_embeds`` — H_t, (n, D) float16: for each generated token, the last-layer hidden state
  (the input of ``lm_head``, after the final norm) of the step that produced it, so
  ``argmax(lm_head(H_t[j])) == token_ids[j]`` under greedy decoding. The end token counts as a
  generated token (its row is the state that decided to stop), as in the authors' release;
- ``token_ids`` — the generated ids (n,), end token included when reached.

How it is computed: one `model.generate` per batch of prompts, left-padded; H_i is captured with a
forward hook on the projector during the prefill, H_t with a pre-hook on ``lm_head`` at every step
(`generate(output_hidden_states=True)` would keep every layer's states for the whole prompt and every
step, gigabytes for a 13B model, to use one vector per step).

Decoding: the paper's defaults — sampling at temperature 0.2, up to 1024 new tokens, stop at the end
token — seeded: the RNG is seeded with ``seed`` once per call (the caller's global RNG state is
restored afterwards) and the batches run in order, so with sampling the outputs depend on the seed
AND on how the samples are batched. ``greedy=True`` gives outputs that depend on neither (batched
equals one at a time, up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lego_core.errors import BadInput, LegoError


@dataclass
class VllmOutput:
    """One sample's result (see the module docstring)."""

    description: str
    image_embeds: "np.ndarray"   # H_i: (M, D) float16  # noqa: F821
    text_embeds: "np.ndarray"    # H_t: (n, D) float16, n <= max_text_tokens when given  # noqa: F821
    token_ids: "np.ndarray"      # (n_generated,) int64, the end token included when reached  # noqa: F821
    question: str
    stopped: bool                # True: ended with the end token; False: hit max_new_tokens

    # the paper's names
    @property
    def h_i(self):
        return self.image_embeds

    @property
    def h_t(self):
        return self.text_embeds


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if v is None:
            continue
        ids.extend(v if isinstance(v, (list, tuple)) else [v])
    out = list(dict.fromkeys(int(i) for i in ids))
    if not out:
        raise BadInput("the VLLM has no end-of-sequence token (generation_config.eos_token_id / tokenizer.eos_token)")
    return out


def _projector(model):
    inner = getattr(model, "model", model)
    proj = getattr(inner, "multi_modal_projector", None) or getattr(model, "multi_modal_projector", None)
    if proj is None:
        raise BadInput(f"{type(model).__name__} has no multi_modal_projector: expected a LlavaForConditionalGeneration")
    return proj


def generation_kwargs(model, tokenizer, *, greedy: bool, temperature: float, max_new_tokens: int) -> dict:
    """The keyword arguments `describe_and_embed` passes to `model.generate`."""
    if max_new_tokens < 1:
        raise BadInput(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    if greedy:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        if not temperature > 0:
            raise BadInput(f"temperature must be > 0 when sampling (use greedy decoding instead), not {temperature}")
        kw.update(do_sample=True, temperature=float(temperature))
    return kw


def _batch(model, processor, images, prompts, gen_kwargs, max_text_tokens, questions) -> list[VllmOutput]:
    import torch

    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # batched generation continues every row at the right end
    try:
        inputs = processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)

    image_rows: list = []
    step_states: list = []
    hooks = [
        _projector(model).register_forward_hook(lambda m, args, out: image_rows.append(out.detach())),
        model.get_output_embeddings().register_forward_pre_hook(
            lambda m, args: step_states.append(args[0][:, -1].detach())),
    ]
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs, return_dict_in_generate=True)
    finally:
        for h in hooks:
            h.remove()

    prompt_len = inputs["input_ids"].shape[1]
    new = out.sequences[:, prompt_len:].cpu()
    if not image_rows:
        raise LegoError("the VLLM's projector was not called during generation: cannot take H_i")
    h_i = image_rows[0]
    if h_i.dim() == 2:  # some versions flatten (B*M, D)
        h_i = h_i.view(len(prompts), -1, h_i.shape[-1])
    if len(step_states) != new.shape[1]:
        raise LegoError(f"lm_head ran {len(step_states)} times for {new.shape[1]} generated tokens: cannot take H_t")
    states = torch.stack(step_states, dim=1)  # (B, steps, D)
    eos = set(gen_kwargs["eos_token_id"])
    results = []
    for i in range(len(prompts)):
        ids = new[i].tolist()
        stop = next((j for j, t in enumerate(ids) if t in eos), None)
        n = len(ids) if stop is None else stop + 1
        keep = n if not max_text_tokens else min(n, max_text_tokens)
        text_ids = ids[: n - 1] if stop is not None else ids[:n]
        results.append(VllmOutput(
            description=tok.decode(text_ids, skip_special_tokens=True).strip(),
            image_embeds=h_i[i].to(torch.float16).cpu().numpy(),
            text_embeds=states[i, :keep].to(torch.float16).cpu().numpy(),
            token_ids=torch.tensor(ids[:n], dtype=torch.int64).numpy(),
            question=questions[i],
            stopped=stop is not None,
        ))
    return results


def describe_and_embed(
    model,
    processor,
    images: Sequence,
    labels: Sequence[str],
    *,
    greedy: bool = False,
    temperature: float = 0.2,
    max_new_tokens: int = 1024,
    seed: int = 0,
    batch_size: int = 16,
    max_text_tokens: int | None = None,
    questions: Sequence[str] | None = None,
    aspect: str = "crop",
    question: str | None = None,
) -> list[VllmOutput]:
    """Describe how to do each action in its image; return R, H_i and H_t per sample, in order.

    `model`, `processor`: a `LlavaForConditionalGeneration` and its processor (`load.load_vllm`).
    `images`: PIL images (any mode; converted to RGB). `labels`: action labels ("cut onion"; Ego4D
    narrations are cleaned), one per image, put into the inference question: the authors' (default)
    or the template `question` ("{}" where the action goes) — or pass `questions` (one full
    question per image) to ask something else.
    `greedy`: greedy decoding instead of the paper's sampling at `temperature` (0.2).
    `max_new_tokens`: generation stops at the end token or after this many tokens (paper: 1024).
    `seed`: seeds the sampling (see the module docstring: sampled outputs depend on the seed and on
    the batching; greedy ones on neither). `batch_size`: samples per `generate` call (left padding).
    `max_text_tokens`: keep at most this many rows of H_t (None/0: all); the description is whole.
    `aspect`: "crop" (the processor's resize + centre crop, as the authors) or "pad" (to a square).

    Returns a list of `VllmOutput` (``.description`` str, ``.image_embeds`` (M, D) float16 numpy,
    ``.text_embeds`` (n, D) float16 numpy, ``.token_ids``, ``.question``, ``.stopped``).
    """
    import torch

    from lego_core.vllm.prompting import build_prompt, prepare_image
    from lego_core.vllm.templates import inference_question

    images, labels = list(images), list(labels)
    if questions is None:
        if len(images) != len(labels):
            raise BadInput(f"{len(images)} images but {len(labels)} labels")
        questions = [inference_question(label, question) for label in labels]
    else:
        questions = list(questions)
        if len(questions) != len(images):
            raise BadInput(f"{len(images)} images but {len(questions)} questions")
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, not {batch_size}")
    if max_text_tokens is not None and max_text_tokens < 0:
        raise BadInput(f"max_text_tokens must be >= 0, not {max_text_tokens}")
    if not images:
        return []
    gen_kwargs = generation_kwargs(model, processor.tokenizer, greedy=greedy, temperature=temperature,
                                   max_new_tokens=max_new_tokens)
    prompts = [build_prompt(processor, q) for q in questions]
    prepared = [prepare_image(im, processor, aspect) for im in images]
    device = torch.device(model.device)
    results: list[VllmOutput] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            end = start + batch_size
            results.extend(_batch(model, processor, prepared[start:end], prompts[start:end], gen_kwargs,
                                  max_text_tokens, questions[start:end]))
    return results
