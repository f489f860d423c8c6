"""A tiny LLaVA pre-aligned to the kit's world: the stand-in for the pretrained LLaVA-1.5 users start from.

LEGO tunes LLaVA-1.5, whose CLIP tower and projector were pretrained to tell the language model what
is where in a picture. A random tiny LLaVA knows none of that, and the demo's 300 tuning pairs cannot
teach it: tuned from random weights it names the verb and the object of every held-out clip, but says
where the object is no better than from a blank image (measured over 16–100 epochs, more clips, frozen
or trained towers, other templates: README). Looking an object up *by its name* among four is learnt
from thousands of fresh scenes, not hundreds.

`align_world_llava` gives it those, as LLaVA's pretraining gives the real one its grounding: fresh
layouts of the world (1–4 objects; the one-object scenes are the curriculum that starts the look-up)
and two grounding questions about a random object in each, each in several wordings (`WHERE`, `HAND`),

    "Where is the onion?"
        → "I see the onion on the left of the counter."
    "I want to cut onion. Which hand is nearer the onion, and where is it?"
        → "The left hand is nearer the onion on the left of the counter."

answer-only loss, the whole model trained (the kit's tower is random too), AdamW. Before training,
the projector's and the language model's linear layers are drawn at std 1/sqrt(fan_in): at
transformers' 0.02 the image barely moves a 128-wide residual stream, and the look-up does not start
in thousands of steps (measured).

`WORLD_LLAVA` is the result at the demo's sizes, shipped with the package (fp16); the demo tunes it
(tower frozen, as the paper does) instead of a random one. `scripts/align_llava.py` rebuilds it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .world import OBJECTS, make_layout, render
from .world_data import WorldConfig

WORLD_LLAVA = Path(__file__).parent / "pretrained" / "llava-world"
WORLD_LLAVA_SIZES = dict(image_size=48, patch_size=8, text_hidden=128, position_codes=True)
PLACES = {"left": "on the left of", "centre": "in the centre of", "right": "on the right of"}
FRAME = WorldConfig.width        # the world's frames, square; the processor resizes them


# Several wordings, the object named at different places and inside an action ("cut onion") as the
# tuning questions name it: from one wording the model learns to find the name by its position in
# that sentence, and the tuned descriptions then named the hand and place no better than chance
# (measured: place 0.39 held out after tuning, vs 0.94 with these).
WHERE = ("Where is the {noun}?", "Where is the {noun} in this scene?", "Look at the counter. Where is the {noun}?",
         "In this first-person view, where is the {noun}? Say left, centre or right.",
         "Find the {noun} in this picture and say where it is.",
         "I want to {verb} the {noun}. Where is it on the counter?")
HAND = ("Which hand is nearer the {noun}, and where is the {noun}?",
        "I want to {verb} {noun}. Which hand is nearer the {noun}, and where is it?",
        "To {verb} {noun} in this scene, which hand would I use, and where is the {noun}?",
        "How far is the {noun}? Say which hand is nearer it and where it is on the counter.")


def where_answer(name: str, place: str) -> str:
    return f"I see the {name} {PLACES[place]} the counter."


def hand_answer(name: str, hand: str, place: str) -> str:
    """The hand first, then the object and its place: the order the world's descriptions say them in
    ("The left hand cuts the onion on the left of ..."), so what it teaches carries over to them."""
    return f"The {hand} hand is nearer the {name} {PLACES[place]} the counter."


def _question_and_answer(rng: np.random.Generator, obj, about_hand: bool) -> tuple[str, str]:
    templates = HAND if about_hand else WHERE
    question = templates[int(rng.integers(len(templates)))].format(
        noun=obj.name, verb=str(rng.choice(list(OBJECTS[obj.name][3]))))
    return question, hand_answer(obj.name, obj.hand, obj.side) if about_hand else where_answer(obj.name, obj.side)


def _scene(rng: np.random.Generator, n_objects: int):
    """A fresh layout's frame at rest and one of its objects."""
    from PIL import Image

    layout = make_layout(rng, tuple(OBJECTS), n_objects)
    obj = layout.objects[int(rng.integers(len(layout.objects)))]
    return Image.fromarray(render(layout, FRAME, FRAME)), obj


def _encode(processor, images, questions, answers):
    """Batched LLaVA inputs with labels on the answer tokens only (EOS included): `lego tune-vllm`'s
    own encoding, so the alignment sees the conversations tuning later does."""
    from lego_core.vllm.tune_data import collate_examples, encode_example

    batch = collate_examples([encode_example(processor, im, q, a) for im, q, a in zip(images, questions, answers)],
                             processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    return batch, labels


def place_accuracy(model, processor, n_objects: int, samples: int = 96, seed: int = 10_000) -> float:
    """Share of fresh `n_objects`-object scenes in which the model finds "Where is the X?"'s true
    answer more likely than the two other places (teacher-forced, summed log-probability)."""
    import torch

    rng = np.random.default_rng(seed + n_objects)
    scenes = [_scene(rng, n_objects) for _ in range(samples)]
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, samples, 48):
            batch = scenes[i : i + 48]
            scores = []
            for place in PLACES:
                enc, labels = _encode(processor, [im for im, _ in batch], [f"Where is the {o.name}?" for _, o in batch],
                                      [where_answer(o.name, place) for _, o in batch])
                logp = torch.log_softmax(model(**enc).logits[:, :-1].float(), -1)
                target = labels[:, 1:]
                token_logp = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * (target != -100)
                scores.append(token_logp.sum(1))
            guess = torch.stack(scores, 1).argmax(1).tolist()
            correct += sum(list(PLACES)[g] == o.side for g, (_, o) in zip(guess, batch))
    model.train(was_training)
    return correct / samples


def _reinit_linears(model) -> None:
    import torch

    inner = model.model
    for module in (inner.language_model, inner.multi_modal_projector, model.lm_head):
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))


def align_world_llava(out: str | Path, *, steps: int = 3000, batch: int = 32, lr: float = 5e-4,
                      max_objects: int = 4, hand_share: float = 0.5, warmup: int = 100, seed: int = 0,
                      eval_every: int = 0, dtype: str = "float16", progress: bool = False, **sizes) -> dict:
    """Build a kit LLaVA (`WORLD_LLAVA_SIZES` unless `sizes` say otherwise), align it to the world
    for `steps` (see the module's docstring), save it to `out` in `dtype`; return its held-out
    "where" accuracies on 1-, 2- and 4-object scenes, with the steps and seconds."""
    import torch
    from tqdm import tqdm

    from .llava import tiny_llava

    model, processor = tiny_llava(**{**WORLD_LLAVA_SIZES, **sizes}, seed=seed)
    torch.manual_seed(seed)
    _reinit_linears(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.perf_counter()
    curve = []
    bar = tqdm(range(1, steps + 1), desc="align LLaVA", disable=not progress, leave=False)
    for step in bar:
        scenes = [_scene(rng, int(rng.integers(1, max_objects + 1))) for _ in range(batch)]
        pairs = [_question_and_answer(rng, o, bool(rng.random() < hand_share)) for _, o in scenes]
        enc, labels = _encode(processor, [im for im, _ in scenes], *zip(*pairs))
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if eval_every and step % eval_every == 0:
            curve.append({"step": step, **{str(n): place_accuracy(model, processor, n) for n in (1, 2, 4)}})
    seconds = time.perf_counter() - t0
    model.eval()
    scores = {f"where_{n}_objects": round(place_accuracy(model, processor, n), 3) for n in (1, 2, 4)}
    model.to(getattr(torch, dtype))
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {**scores, "steps": steps, "seconds": round(seconds, 1), "curve": curve}
