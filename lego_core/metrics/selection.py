"""Which metrics a run computes: each one's models built once (`build_metrics`), and the checks
that leave out (with a warning) or refuse (chosen with --metrics) a metric the reference cannot
feed: BLIP without descriptions, EgoVLP without its checkpoint, metrics that need input frames."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from lego_core.errors import BadInput

from . import ALL_METRICS
from .common import Metric, Shared
from .matching import Source

if TYPE_CHECKING:
    from .runner import EvalConfig

log = logging.getLogger(__name__)

def build_metrics(cfg: EvalConfig, device: str, shared: Shared | None = None) -> list[Metric]:
    """Load every metric's models once (in ALL_METRICS' order: psnr, psnr_changed, lpips, ..., egovlp+)."""
    shared = shared or Shared()
    out: list[Metric] = []
    for name in ALL_METRICS:
        if name not in cfg.metrics:
            continue
        if name == "psnr":
            from .pixel import PSNR

            out.append(PSNR())
        elif name == "psnr_changed":
            from .pixel import ChangedPSNR

            out.append(ChangedPSNR())
        elif name == "lpips":
            from .lpips_metric import LPIPS

            out.append(LPIPS(cfg.lpips_net, cfg.lpips_weights, cfg.lpips_authors_range, device))
        elif name == "fid":
            from .fid import FID

            out.append(FID(cfg.fid_weights, cfg.fid_model, device))
        elif name == "clip":
            from .clip_score import ClipScore

            out.append(ClipScore(cfg.clip_model, device, shared))
        elif name == "blip":
            from .blip_score import BlipScore

            out.append(BlipScore(cfg.blip_models, cfg.clip_model, device, shared, cfg.blip_prompt, cfg.blip_beams,
                                 cfg.blip_min_length, cfg.blip_max_length, text_encoder=cfg.blip_text_encoder,
                                 egovlp=cfg.egovlp, egovlp_frames=cfg.egovlp_frames,
                                 egovlp_tokenizer=cfg.egovlp_tokenizer))
        elif name in ("egovlp", "egovlp+"):
            from .egovlp_score import EgoVLPPlusScore, EgoVLPScore

            cls = EgoVLPScore if name == "egovlp" else EgoVLPPlusScore
            out.append(cls(cfg.egovlp, cfg.egovlp_frames, device, shared))
    return out


def check_descriptions(cfg: EvalConfig, ref: Source, keys: Sequence[str]) -> EvalConfig:
    if "blip" not in cfg.metrics:
        return cfg
    if any(ref.texts(k)[1] for k in keys):
        return cfg
    return refuse_or_leave_out(cfg, "blip", f"the BLIP score needs a description per sample and {ref.path} has none "
                               "(shards: enriched.txt / curated.txt / meta.json label; folders: KEY.txt beside "
                               "each reference image)")


def refuse_or_leave_out(cfg: EvalConfig, metric: str, why: str) -> EvalConfig:
    """A metric the data cannot give: chosen with --metrics → BadInput; in the default set → left
    out with a warning."""
    if cfg.metrics_explicit:
        raise BadInput(why)
    log.warning("%s: leaving %s out", why, metric)
    from dataclasses import replace

    return replace(cfg, metrics=tuple(m for m in cfg.metrics if m != metric))


def check_egovlp(cfg: EvalConfig, ref: Source, keys: Sequence[str]) -> EvalConfig:
    """EgoVLP / EgoVLP+ need the checkpoint (and EgoVLP+ the input frames). Chosen with --metrics:
    missing → BadInput; in the default set: left out with a warning, as BLIP without descriptions."""
    from dataclasses import replace

    wanted = [m for m in ("egovlp", "egovlp+") if m in cfg.metrics]
    if cfg.blip_text_encoder == "egovlp" and "blip" in cfg.metrics:
        from .egovlp_score import default_frames, find_checkpoint

        find_checkpoint(cfg.egovlp, cfg.egovlp_frames or default_frames(cfg.egovlp))  # chosen by flag: always fatal
    if not wanted:
        return cfg
    drop: dict[str, str] = {}
    try:
        from .egovlp_score import default_frames, find_checkpoint

        find_checkpoint(cfg.egovlp, cfg.egovlp_frames or default_frames(cfg.egovlp))
    except BadInput as e:
        if cfg.metrics_explicit or cfg.egovlp:
            raise
        drop = {m: str(e) for m in wanted}
    if "egovlp+" in wanted and "egovlp+" not in drop and not any(ref.has_input(k) for k in keys):
        msg = (f"EgoVLP+ needs the input frame of each sample and {ref.path} has none "
               "(shards: input.jpg; a folder reference has no input frames)")
        if cfg.metrics_explicit:
            raise BadInput(msg)
        drop["egovlp+"] = msg
    if not drop:
        return cfg
    for m, why in drop.items():
        log.warning("%s: leaving %s out", why, m)
    return replace(cfg, metrics=tuple(m for m in cfg.metrics if m not in drop))


def check_input_frames(cfg: EvalConfig, ref: Source, keys: Sequence[str]) -> EvalConfig:
    """psnr_changed compares with the input frame: a reference without any (a folder) → BadInput
    when chosen explicitly, else left out with a warning. Samples missing only theirs get no value."""
    if "psnr_changed" not in cfg.metrics or any(ref.has_input(k) for k in keys):
        return cfg
    return refuse_or_leave_out(cfg, "psnr_changed", f"psnr_changed needs the input frame of each sample and "
                               f"{ref.path} has none (shards: input.jpg; a folder reference has no input frames)")
