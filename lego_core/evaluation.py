"""Generate-first evaluation (`lego evaluate SHARDS --model DIR`): generate with each diffusion
model (`diffusion.generate_shards`), then score the folders with the metrics (`metrics.runner`).

Above both: the metrics package scores images and never generates them.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from lego_core.errors import BadInput
from lego_core.metrics.runner import EvalConfig, EvalResult, evaluate, named_sets


def evaluate_models(shards, models: Mapping[str, str] | Sequence[str], cfg: EvalConfig | None = None,
                    out: str | None = None, vllm: str | None = None, progress: bool = False,
                    generate: Callable | None = None, generate_options: dict | None = None) -> EvalResult:
    """Generate-first mode: for each diffusion model, generate an image for every sample of
    `shards` into `OUT/NAME/generated/{key}.png` (resumable), then evaluate exactly as `evaluate`
    does with those folders against the shards — one table row per model."""
    import os
    import tempfile

    from lego_core.diffusion.generate_shards import generate_folder

    generate = generate or generate_folder
    cfg = cfg or EvalConfig()
    if cfg.egovlp or (cfg.metrics_explicit and {"egovlp", "egovlp+"} & set(cfg.metrics)) or \
            (cfg.blip_text_encoder == "egovlp" and "blip" in cfg.metrics):
        from lego_core.metrics.egovlp_score import default_frames, find_checkpoint

        find_checkpoint(cfg.egovlp, cfg.egovlp_frames or default_frames(cfg.egovlp))  # before hours of generating
    named = named_sets(models)
    if generate is generate_folder:       # every model, before hours of generating with the first
        from lego_core.device import looks_local

        missing = [m for m in named.values() if looks_local(m) and not os.path.isdir(m)]
        if missing:
            raise BadInput(f"model folder not found: {missing[0]} (train one with `lego train`, "
                           "or pass a diffusers folder)")
    base = out or tempfile.mkdtemp(prefix="lego-eval-")
    folders = {}
    for name, model in named.items():
        folder = os.path.join(base, name if len(named) > 1 else "", "generated")
        folders[name] = generate(shards, model, folder, vllm=vllm, progress=progress, **(generate_options or {}))
    return evaluate(folders, shards, cfg, out=out, progress=progress)


__all__ = ["evaluate_models"]
