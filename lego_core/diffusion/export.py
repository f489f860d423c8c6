"""`lego train`'s EMA and export: the EMA kept over this rank's weights (or, under ZeRO-3, its
partition), restored on resume, and the final (EMA) weights written as a LegoPipeline folder."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from lego_core.diffusion.build import write_model_info

log = logging.getLogger("lego.train")

def ema_targets(params, zero3: bool) -> list:
    """The tensors holding this rank's current weights: the parameters, or under ZeRO-3 each one's
    partition (`ds_tensor`, which the optimizer updates, then gathers from)."""
    return [p.ds_tensor for p in params] if zero3 else list(params)


def ema_inputs(params, zero3: bool) -> list:
    """`ema_targets` as fp32 views for diffusers' EMAModel, which averages only tensors that
    require grad and *copies* the others: a detached copy would make the "EMA" the raw weights."""
    return [t.detach().float().requires_grad_() for t in ema_targets(params, zero3)]


def load_ema(ema, path: Path) -> None:
    """Restore the EMA from a checkpoint; start it afresh (with a warning) if it is missing or its
    shapes differ (e.g. a ZeRO-3 run resumed with another number of ranks)."""
    if not path.is_file():
        log.warning("%s: no EMA in this checkpoint; the EMA restarts from the current weights", path.parent.name)
        return
    from lego_core.engine.checkpoint import load_trusted_tensors

    state = load_trusted_tensors(path, "the EMA")
    if state is None:
        log.warning("%s: the EMA restarts from the current weights", path.parent.name)
        return
    saved = state.get("shadow_params", [])
    if len(saved) != len(ema.shadow_params) or any(a.shape != b.shape for a, b in zip(saved, ema.shadow_params)):
        log.warning("%s: its EMA does not fit this run (another world size under ZeRO-3?); the EMA restarts "
                    "from the current weights", path)
        return
    ema.load_state_dict(state)


def export_pipeline(pipe, denoiser, engine, params, ema, folder: Path, rank: int, zero3: bool, info: dict) -> Path:
    """The final (EMA) weights as a LegoPipeline folder that `lego generate` loads, with `info`
    (resolution, validation steps) in its lego.json so generation defaults to them."""
    import deepspeed
    import torch.distributed as dist
    from diffusers import EulerAncestralDiscreteScheduler

    if ema is not None:
        ema.copy_to(ema_targets(params, zero3))
        if zero3:  # "persistent" small parameters stay gathered; release them so the gather below reads the EMA
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            for p in params:
                if p.ds_status == ZeroParamStatus.AVAILABLE:
                    p.partition()
    gather = (deepspeed.zero.GatheredParameters(list(denoiser.parameters()), modifier_rank=None) if zero3
              else nullcontext())
    with gather:
        if rank == 0:
            pipe.unet, pipe.conditioner = denoiser.unet, denoiser.conditioner
            for part in (pipe.unet, pipe.conditioner):
                if part is not None and part.dtype != torch.float32:
                    part.to(torch.float32)
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
            save_replacing(pipe, folder, info)
    if dist.is_initialized():
        dist.barrier()
    return folder


def save_replacing(pipe, folder: Path, info: dict) -> None:
    """`pipe.save_pretrained` (and `lego.json`) into this process's temp folder beside `folder`
    (`atomic.temp_name`), emptied first and with killed exports' temps removed (their files must
    not end up in the model), then swapped in for `folder` (`atomic.replace_folder`: a kill
    leaves the old or the new model there, never neither)."""
    import shutil

    from lego_core.atomic import remove_stale_temps, replace_folder, temp_name

    remove_stale_temps(folder.parent, lambda name: name == folder.name)
    tmp = Path(temp_name(folder))
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    write_model_info(tmp, **info)
    replace_folder(tmp, folder)
