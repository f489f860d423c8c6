"""Evidence that a trained LEGO model learned the method, measured on held-out samples.

"The loss went down" proves nothing about what the model draws. This measures what the issue of
the learning demo asks, on samples no model saw (the demo and the learning test share it):

- the generated action frame against the input frame, both scored against the true action frame
  with `psnr_changed` (the pixels the action changed) and `psnr_unchanged` (the rest of the scene):
  a model that learned draws the change; one that copies the input scores the input's figure;
- the true action against wrong ones, same input and seed: the same object with another verb,
  and the same verb with another object in the scene — if the action does not steer the picture,
  the wrong actions score as well as the true one;
- the VAE round trip of the true frame, the ceiling the unchanged region can reach;
- for a VLLM: whether its held-out descriptions name the verb, the object and the object's place.

Generation is passed in as a function (cases, labels, seeds → frames), so the same checks run on
a model with its VLLM (which describes the wrong actions afresh) and on one with stand-in embeddings.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

GOALS = {                          # the learning demo's bar (issue: "Evidence, on the held-out split")
    "changed_gain_db": 3.0,        # generated psnr_changed − the input frame's
    "unchanged_db": 20.0,          # generated psnr_unchanged, absolute ...
    "unchanged_vs_vae_db": -3.0,   # ... and against the VAE round trip's
    "true_vs_wrong_db": 2.0,       # true action − wrong action, psnr_changed, for each kind
    "win_rate": 0.7,               # generated beats input, true beats wrong, on this share of samples
    "vllm_verb_object": 0.9,       # tuned VLLM descriptions naming verb and object
    "vllm_location": 0.8,          # ... and the object's place
}
WRONG_KINDS = ("other_verb", "other_object")


@dataclass
class Case:
    """One held-out sample: its frames (PIL), action and the objects in its scene."""
    key: str
    input: object
    target: object
    verb: str
    noun: str
    label: str
    video_id: str = ""
    boxes: list = field(default_factory=list)
    scene: list = field(default_factory=list)     # object names in the scene (wrong-object actions)
    wrong: dict = field(default_factory=dict)     # kind -> wrong label


def read_cases(shards: Sequence[str], scenes: dict[str, list[str]], verbs_for: Callable[[str, str], Sequence[str]],
               limit: int | None = None) -> list[Case]:
    """Held-out samples with their wrong actions. `scenes` maps a video id to the objects in it;
    `verbs_for(noun, verb)` lists the verbs that make sense for a noun (in that sample's state)."""
    from PIL import Image

    from lego_core.curate.template import split_label
    from lego_core.data.shards import iter_samples

    cases = []
    for s in iter_samples(list(shards)):
        meta = json.loads(s["meta.json"])
        # the label's verb, not the dataset's verb class ("take" for "pick up cup", "turn-on"): the
        # wrong actions are labels too, and one built from the class could be the true label again
        verb = split_label(meta["label"], meta["noun"])[0]
        c = Case(key=s["__key__"], input=Image.open(io.BytesIO(s["input.jpg"])).convert("RGB"),
                 target=Image.open(io.BytesIO(s["target.jpg"])).convert("RGB"), verb=verb, noun=meta["noun"],
                 label=meta["label"], video_id=meta["video_id"], boxes=meta.get("boxes") or [],
                 scene=list(scenes.get(meta["video_id"], [])))
        other_verb = next((v for v in verbs_for(c.noun, c.verb) if v != c.verb), None)
        other_obj = next((o for o in c.scene if o != c.noun and c.verb in verbs_for(o, c.verb)), None)
        if other_verb:
            c.wrong["other_verb"] = f"{other_verb} {c.noun}"
        if other_obj:
            c.wrong["other_object"] = f"{c.verb} {other_obj}"
        cases.append(c)
        if limit and len(cases) >= limit:
            break
    return sorted(cases, key=lambda c: c.key)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _share(pairs) -> float | None:
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return float(np.mean([a > b for a, b in pairs])) if pairs else None


def measure(cases: list[Case], generate: Callable[[list[Case], list[str], list[int]], list], *, seed: int = 0,
            round_trip: Callable[[object], object] | None = None, batch: int = 8) -> dict:
    """Generate the true and the wrong actions of every case (same seed per case) and score them.
    `generate(cases, labels, seeds)` returns one frame per (case's input frame, label, seed).

    Returns {"summary": {...figures...}, "checks": [{name, value, goal, passed}], "samples": [...],
    "images": {key: {"generated": img, "other_verb": img, ...}}}."""
    from lego_core.metrics.pixel import changed_psnr, changed_region

    jobs = [(c, "true", c.label) for c in cases] + [(c, k, lab) for c in cases for k, lab in c.wrong.items()]
    images: dict[str, dict] = {c.key: {} for c in cases}
    for i in range(0, len(jobs), batch):
        part = jobs[i : i + batch]
        outs = generate([c for c, _, _ in part], [lab for _, _, lab in part], [seed] * len(part))
        for (c, kind, _), im in zip(part, outs):
            images[c.key][kind] = im
    rows = []
    for c in cases:
        mask = changed_region(c.input, c.target)
        score = lambda im: changed_psnr(im, c.input, c.target, mask=mask)  # noqa: E731
        gen, inp = score(images[c.key]["true"]), score(c.input)
        row = {"key": c.key, "label": c.label, "changed_fraction": round(gen.changed_fraction, 4),
               "psnr_changed": gen.changed, "psnr_unchanged": gen.unchanged,
               "input_psnr_changed": inp.changed, "input_psnr_unchanged": inp.unchanged}
        if round_trip is not None:
            row["vae_psnr_unchanged"] = score(round_trip(c.target)).unchanged
        for kind in WRONG_KINDS:
            if kind in images[c.key]:
                row[f"{kind}_label"] = c.wrong[kind]
                row[f"{kind}_psnr_changed"] = score(images[c.key][kind]).changed
        rows.append(row)
    summary = summarise(rows)
    return {"summary": summary, "checks": checks(summary), "samples": rows, "images": images}


def summarise(rows: list[dict]) -> dict:
    col = lambda k: [r.get(k) for r in rows]  # noqa: E731
    s = {"samples": len(rows), "excluded_small_change": sum(r["psnr_changed"] is None for r in rows),
         "psnr_changed": _mean(col("psnr_changed")), "input_psnr_changed": _mean(col("input_psnr_changed")),
         "psnr_unchanged": _mean(col("psnr_unchanged")), "input_psnr_unchanged": _mean(col("input_psnr_unchanged")),
         "vae_psnr_unchanged": _mean(col("vae_psnr_unchanged")),
         "beats_input": _share(zip(col("psnr_changed"), col("input_psnr_changed")))}
    for kind in WRONG_KINDS:
        pairs = [(r["psnr_changed"], r.get(f"{kind}_psnr_changed")) for r in rows if f"{kind}_psnr_changed" in r]
        s[f"{kind}_samples"] = len(pairs)
        s[f"true_{kind}_psnr_changed"] = _mean(a for a, b in pairs if b is not None)
        s[f"{kind}_psnr_changed"] = _mean(b for a, b in pairs if a is not None)
        s[f"beats_{kind}"] = _share(pairs)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}


def checks(s: dict) -> list[dict]:
    """The issue's inequalities as rows: name, value, goal, passed."""
    def row(name, value, goal):
        return {"name": name, "value": None if value is None else round(value, 3), "goal": goal,
                "passed": value is not None and value >= goal}
    diff = lambda a, b: None if s.get(a) is None or s.get(b) is None else s[a] - s[b]  # noqa: E731
    out = [row("psnr_changed gain over the input frame (dB)", diff("psnr_changed", "input_psnr_changed"),
               GOALS["changed_gain_db"]),
           row("psnr_unchanged (dB)", s.get("psnr_unchanged"), GOALS["unchanged_db"])]
    if s.get("vae_psnr_unchanged") is not None:
        out.append(row("psnr_unchanged − VAE round trip's (dB)", diff("psnr_unchanged", "vae_psnr_unchanged"),
                       GOALS["unchanged_vs_vae_db"]))
    out.append(row("share of samples where generated beats input", s.get("beats_input"), GOALS["win_rate"]))
    for kind in WRONG_KINDS:
        if s.get(f"{kind}_samples"):
            what = "another verb, same object" if kind == "other_verb" else "same verb, another object"
            out.append(row(f"true − wrong action ({what}), psnr_changed (dB)",
                           diff(f"true_{kind}_psnr_changed", f"{kind}_psnr_changed"), GOALS["true_vs_wrong_db"]))
            out.append(row(f"share where true beats wrong ({what})", s.get(f"beats_{kind}"), GOALS["win_rate"]))
    return out


def vae_round_trip(model: str, size: int):
    """The model folder's VAE as a function: a frame at `size`², encoded and decoded, back at the
    frame's size — the best any generated frame of this model can match."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()

    def round_trip(im):
        x = torch.from_numpy(np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1)
        with torch.no_grad():
            y = vae.decode(vae.encode(x.permute(2, 0, 1)[None]).latent_dist.mode()).sample[0].clamp(-1, 1)
        arr = ((y.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        return Image.fromarray(arr).resize(im.size, Image.Resampling.BICUBIC)
    return round_trip


# -------------------------------------------------------------------------------------------------
# The VLLM's descriptions
# -------------------------------------------------------------------------------------------------


def place_words(box) -> str:
    """How a description says where an object is: 'on the left', 'in the centre', 'on the right'."""
    from lego_core.curate.template import horizontal

    side = horizontal(box)
    return "in the centre" if side == "centre" else f"on the {side}"


def description_scores(descriptions: Sequence[str], cases: Sequence[Case]) -> dict:
    """Share of descriptions naming the verb (3rd person, as the curated ones) and the object, and
    the object's place — which only the image tells."""
    from lego_core.curate.template import third_person

    vn = loc = 0
    for d, c in zip(descriptions, cases):
        d = d.lower()
        vn += third_person(c.verb) in d and c.noun in d
        box = next((b["box"] for b in c.boxes if b.get("kind") in ("object_of_change", "object")), None)
        loc += box is not None and place_words(box) in d
    n = max(1, len(cases))
    return {"verb_object": round(vn / n, 3), "location": round(loc / n, 3), "samples": len(cases)}


def vllm_description_scores(vllm: str, cases: Sequence[Case], *, blank: bool = False, aspect: str = "pad",
                            max_new_tokens: int = 48, question: str | None = None) -> dict:
    """`description_scores` of a LLaVA folder's greedy held-out descriptions (`blank`: of a grey
    image instead of the frame — what the VLLM says from the label alone)."""
    from PIL import Image

    from lego_core.vllm.describe import describe_and_embed
    from lego_core.vllm.load import load_vllm

    model, processor = load_vllm(vllm, device="cpu", dtype="float32")
    images = [Image.new("RGB", c.input.size, (128, 128, 128)) if blank else c.input for c in cases]
    outs = describe_and_embed(model, processor, images, [c.label for c in cases], greedy=True,
                              max_new_tokens=max_new_tokens, aspect=aspect, question=question)
    scores = description_scores([o.description for o in outs], cases)
    scores["example"] = outs[0].description if outs else ""
    return scores
