"""tune-vllm's data: one example (chat formatting, answer-only labels, truncation), the batch
collation, and the curated shards read as (image, question, answer) examples.

Apart from the training loop (`tune.py`) so each can be read alone; torch and transformers are
imported inside the functions.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tarfile

from lego_core.errors import BadInput

log = logging.getLogger("lego.tune")

IGNORE = -100


# ---------------------------------------------------------------------------------------------
# One example: chat formatting, answer-only labels, truncation


class SkipSample(Exception):
    """A sample that cannot make a training example (its prompt alone exceeds max_length)."""


def _messages(question: str, answer: str | None, image=None) -> list[dict]:
    img = {"type": "image"} if image is None else {"type": "image", "image": image}
    msgs = [{"role": "user", "content": [img, {"type": "text", "text": question}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def answer_mask_kind(processor) -> str:
    """How the answer tokens are found: "generation" (the processor's chat template marks them
    with `{% generation %}`: `return_assistant_tokens_mask`), "prefix" (a chat template without
    the tag: every token after the rendered prompt), "fallback" (no chat template: LLaVA-1.5's
    format, the answer and the end token after the prompt)."""
    from lego_core.vllm.prompting import has_chat_template

    if not has_chat_template(processor):
        return "fallback"
    template = getattr(processor, "chat_template", None)
    return "generation" if template and _GENERATION_TAG.search(template) else "prefix"


def encode_example(processor, image, question: str, answer: str, *, max_length: int = 2048) -> dict:
    """One training example as 1-D tensors: input_ids, attention_mask, labels (-100 but on the
    answer tokens) and pixel_values (3, H, W), cut to `max_length` tokens. `image`: an RGB PIL
    image already through `prepare_image`. Raises `SkipSample` when the prompt alone (image tokens
    included) does not fit."""
    import torch

    from lego_core.vllm.prompting import build_prompt

    kind = answer_mask_kind(processor)
    if kind == "generation":
        enc = processor.apply_chat_template(_messages(question, answer, image), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, return_tensors="pt")
        ids = enc["input_ids"][0]
        keep = enc["assistant_masks"][0].bool()
        n_prompt = int(keep.nonzero()[0]) if keep.any() else len(ids)
    else:
        prompt = build_prompt(processor, question)
        if kind == "fallback":
            full = f"{prompt} {answer}{processor.tokenizer.eos_token or ''}"
        elif getattr(processor, "chat_template", None):
            full = processor.apply_chat_template(_messages(question, answer))
        else:
            full = processor.tokenizer.apply_chat_template(_messages(question, answer), tokenize=False)
        enc = processor(images=[image], text=[full], return_tensors="pt")
        ids = enc["input_ids"][0]
        prompt_ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0]
        n = min(len(prompt_ids), len(ids))
        n_prompt = int((prompt_ids[:n] == ids[:n]).long().cumprod(0).sum())   # longest common prefix
        keep = torch.zeros(len(ids), dtype=torch.bool)
        keep[n_prompt:] = True
    if n_prompt >= max_length:
        raise SkipSample(f"the prompt is {n_prompt} tokens (image tokens + question), not under "
                         f"--max-length {max_length}")
    ids, mask, keep = end_answer_with_eos(processor.tokenizer, ids, enc["attention_mask"][0], keep)
    labels = torch.where(keep, ids, torch.full_like(ids, IGNORE))
    return {"input_ids": ids[:max_length], "attention_mask": mask[:max_length],
            "labels": labels[:max_length], "pixel_values": enc["pixel_values"][0]}


def _blank(tokenizer, token_id: int) -> bool:
    """A whitespace-only, non-special token (Llama's lone '▁' after `answer + ' '`)."""
    return token_id not in tokenizer.all_special_ids and not tokenizer.decode([token_id]).strip()


def end_answer_with_eos(tokenizer, ids, mask, keep):
    """(ids, attention_mask, keep) with the labelled answer ending in the tokenizer's EOS, as in
    LLaVA's own recipe (answer + `</s>`): without it the model never learns to stop and `lego
    enrich` runs every sample to max_new_tokens. llava-hf's templates put `answer + ' '` and no EOS
    in `{% generation %}`: the trailing whitespace-only token becomes the EOS (the sequence is then
    the fallback format's); an EOS right after the span is labelled; else one is inserted there."""
    import torch

    eos = tokenizer.eos_token_id
    span = keep.nonzero().flatten()
    if eos is None or not len(span) or int(ids[span[-1]]) == eos:
        return ids, mask, keep
    end = int(span[-1])
    if len(span) > 1 and _blank(tokenizer, int(ids[end])):            # never drops the whole answer
        ids = ids.clone()
        ids[end] = eos
        return ids, mask, keep
    if end + 1 < len(ids) and int(ids[end + 1]) == eos:               # the template's EOS, outside the tag
        keep = keep.clone()
        keep[end + 1] = True
        return ids, mask, keep

    def insert(t, value):
        return torch.cat([t[:end + 1], t.new_tensor([value]), t[end + 1:]])

    return insert(ids, eos), insert(mask, 1), insert(keep, True)


def collate_examples(examples: list[dict], pad_id: int) -> dict:
    """Right-padded batch (padding: pad_id, mask 0, label -100)."""
    import torch

    n = max(len(e["input_ids"]) for e in examples)

    def pad(key, value):
        return torch.stack([torch.nn.functional.pad(e[key], (0, n - len(e[key])), value=value) for e in examples])

    return {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE), "pixel_values": torch.stack([e["pixel_values"] for e in examples])}


def question_seed(seed: int, epoch: int, key: str) -> int:
    """The template draw of one sample in one epoch: fixed by (seed, epoch, key), so it does not
    depend on ranks, workers or resuming."""
    digest = hashlib.sha256(f"lego-tune-{seed}-{epoch}-{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ---------------------------------------------------------------------------------------------
# Data


class DecodeCurated:
    """Pipeline stage (module level: pickles into spawned workers): raw sample -> key, prepared RGB
    image, label, answer. A sample that fails to decode is skipped and logged."""

    def __init__(self, image_mean, aspect: str):
        self.image_mean, self.aspect = image_mean, aspect

    def __call__(self, src):
        from types import SimpleNamespace

        from PIL import Image

        from lego_core.data.schema import CURATED, INPUT, META, decode_meta, decode_text
        from lego_core.vllm.prompting import prepare_image
        from lego_core.vllm.templates import action_text

        fake_processor = SimpleNamespace(image_processor=SimpleNamespace(image_mean=self.image_mean))
        for sample in src:
            key = sample.get("__key__")
            try:
                with Image.open(io.BytesIO(sample[INPUT])) as im:
                    image = prepare_image(im, fake_processor, self.aspect)
                label = decode_meta(sample[META]).label
                action_text(label)
                answer = decode_text(sample[CURATED]).strip()
                if not answer:
                    raise ValueError("empty curated.txt")
            except Exception as e:  # noqa: BLE001 - one bad sample never stops training
                log.warning("skipped %s: %s", key, e)
                continue
            yield {"key": key, "image": image, "label": label, "answer": answer}


def _as_list(batch):
    return batch


def curated_counts(urls: list[str]) -> tuple[int, int, str | None]:
    """(samples, samples with curated.txt, the first shard lacking it) from the tar headers of
    local shards (no decoding). Remote shards are not counted."""
    from lego_core.data.schema import CURATED
    from lego_core.data.shards import is_remote, iter_members, tar_problem

    total = curated = 0
    lacking = None
    for url in urls:
        if is_remote(url):
            continue
        keys: dict[str, bool] = {}
        try:
            for key, field, _ in iter_members(url):
                keys[key] = keys.get(key, False) or field == CURATED
        except (tarfile.TarError, EOFError, OSError) as e:
            raise BadInput(f"cannot read shard {url}: {tar_problem(e)}; re-create it, or leave it out of the "
                           "inputs") from None
        total += len(keys)
        curated += sum(keys.values())
        if lacking is None and not all(keys.values()):
            lacking = url
    return total, curated, lacking


def check_curated(urls: list[str]) -> int:
    """Fail at start, with one line, when no sample has curated.txt; warn when some lack it.
    Returns the number of usable samples (for the epoch length)."""
    total, curated, lacking = curated_counts(urls)
    if total and not curated:
        raise BadInput(f"{lacking}: samples lack curated.txt, the answers tune-vllm trains on "
                       "(run `lego curate` on these shards first)")
    if curated < total:
        log.warning("%d of %d samples lack curated.txt and are skipped (first in %s)", total - curated, total, lacking)
    return curated
