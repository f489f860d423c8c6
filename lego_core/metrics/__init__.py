"""The paper's evaluation metrics and `lego evaluate`'s runner and report.

One module per metric family — `pixel` (PSNR, and PSNR over the changed / unchanged region),
`lpips_metric` (LPIPS), `fid` (FID), `clip_score` (CLIP image–image), `blip_score` (BLIP caption vs
description), `egovlp_score` (EgoVLP and EgoVLP+, the paper's primary metrics; the model itself is
ported in `egovlp`) — each a `Metric` (see `common`) that is fed batches of matched samples and
returns per-image values (and set-level values for FID). `matching` pairs generated images with
references (folders by relative path without extension, shards by key), `selection` builds the
metrics a run computes (leaving out those the reference cannot feed), `runner` drives one or several
generated sets through them, `report` writes metrics.json / the per-sample CSV / report.html.
Generating images first (`lego evaluate SHARDS --model DIR`) is
`lego_core.evaluation.evaluate_models`, above this package: metrics never generate.

Importing this package is cheap: torch, transformers and lpips are imported when a metric is built.

    from lego_core.metrics import EvalConfig, evaluate
    result = evaluate({"ours": "gen/"}, "shards/", EvalConfig(metrics=("psnr", "lpips")), out="eval/")
"""

from __future__ import annotations

ALL_METRICS = ("psnr", "psnr_changed", "lpips", "fid", "clip", "blip", "egovlp", "egovlp+")
# The paper's metrics: what runs when none are chosen (psnr_changed is ours, asked for by name).
DEFAULT_METRICS = tuple(m for m in ALL_METRICS if m != "psnr_changed")
METRIC_ALIASES = {"egovlp_plus": "egovlp+", "psnr_unchanged": "psnr_changed"}

__all__ = ["ALL_METRICS", "DEFAULT_METRICS", "EvalConfig", "EvalResult", "SetResult", "evaluate"]


def __getattr__(name: str):
    if name in ("EvalConfig", "EvalResult", "SetResult", "evaluate"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
