"""Prompts for the VLLM: the model's own chat template when it has one, a documented fallback
otherwise, and the image preparation shared by inference and tuning.

Fallback (no chat template on the processor or its tokenizer): LLaVA-1.5's conversation format
(`llava_v1`), the one llava-1.5-*-hf were trained with::

    USER: <image>\\n{question} ASSISTANT:

(`<image>` is the processor's image token; the processor expands it to one token per image patch.)
The authors' LEGO VLLM (LLaVA v1 on Llama-2-13B-chat) was tuned and run with `llava_llama_2`
instead, ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{question} [/INST]``: `lego import vllm`
writes that as the imported folder's chat template, so this fallback is never used for it.
"""

from __future__ import annotations

FALLBACK_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"
ASPECTS = ("pad", "crop")


def has_chat_template(processor) -> bool:
    tok = getattr(processor, "tokenizer", None)
    return bool(getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None))


def build_prompt(processor, question: str, *, system: str | None = None) -> str:
    """The text of a one-turn conversation (one image, then `question`) ending where the assistant's
    answer starts: through `processor.apply_chat_template` when the model has a chat template,
    `FALLBACK_TEMPLATE` otherwise."""
    if has_chat_template(processor):
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        return processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = FALLBACK_TEMPLATE.format(image=processor.image_token, question=question)
    return f"{system} {prompt}" if system else prompt


def prepare_image(image, processor=None, aspect: str = "crop"):
    """An RGB PIL image ready for the processor.

    "crop" (default, what the authors did at tuning and inference): leave it to the processor
    (resize + centre crop: the sides of a wide frame are lost).
    "pad" (LLaVA-1.5's `image_aspect_ratio=pad`): pad the
    short side to a square with the processor's mean colour, so the whole frame is seen.
    """
    from PIL import Image

    if aspect not in ASPECTS:
        raise ValueError(f"aspect must be one of {ASPECTS}, not {aspect!r}")
    image = image.convert("RGB")
    w, h = image.size
    if aspect == "crop" or w == h:
        return image
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
    fill = tuple(int(round(255 * float(c))) for c in list(mean)[:3])
    side = max(w, h)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square
