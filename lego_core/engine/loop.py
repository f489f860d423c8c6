"""The one training loop `lego train` and `lego tune-vllm` share, with a recipe per model.

The loop owns what every run does the same way: start (or resume) the run folder, initialise
DeepSpeed, restore the checkpoint, log, write the resolved config, stream the data from where the
checkpoint left it, accumulate, checkpoint, export, and the "already finished" shortcut (a rerun
of a finished run exports nothing again). A `Recipe` says what differs per model: how to build it,
how one micro-batch becomes a loss, and how the trained model is exported.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("lego.engine")


class Recipe:
    """One model's part of a run; the loop calls these in order. ``cfg`` has the options both
    trainers share (seed, engine, overwrite, resume, progress, log_every, checkpoint_every,
    keep_checkpoints, workers, shuffle_buffer, resample)."""

    name = "train"                          # the progress bar's label
    config_file = "train-config.json"       # the resolved config, in the run folder
    outputs: tuple[str, ...] = ("checkpoints", "model", "log.jsonl", "tensorboard")
    finished_marker = "config.json"         # in run/model: the export of a finished run
    rate_name = "samples_per_s"             # what `micro_step`'s count counts, per second

    def __init__(self, cfg, run: Path, rank: int, world: int, device):
        self.cfg, self.run, self.rank, self.world, self.device = cfg, run, rank, world, device

    def total_steps(self, n_samples: int) -> int:
        raise NotImplementedError

    def build(self, ds_config: dict, total: int):
        """(model, optimizer, lr_scheduler, trainable parameters) to hand to DeepSpeed."""
        raise NotImplementedError

    def ready(self, engine, ds_config: dict) -> None:
        """After DeepSpeed: what needs the engine (moving frozen parts, EMA, the step function)."""

    def resume(self, checkpoint: Path) -> None:
        """Restore what DeepSpeed's checkpoint does not hold (an EMA)."""

    def announce(self, total: int, n_samples: int) -> None:
        """Rank 0, at start: say what the run will do."""

    def resolved(self, total: int, n_samples: int, ds_config: dict) -> dict:
        return {"world_size": self.world, "total_steps": total, "samples": n_samples, "deepspeed": ds_config}

    def dataset(self, stats):
        """(the webdataset pipeline, the DataLoader's collate_fn)."""
        raise NotImplementedError

    def next_batch(self, batches: Iterator) -> tuple[int, int, Any]:
        """(epoch, batches_in_epoch, batch) from the stream of (epoch, in_epoch, loader batch)."""
        return next(batches)

    def micro_step(self, engine, batch, step: int) -> tuple[Any, int]:
        """(loss, count for the rate) of one micro-batch; the loop does backward and step."""
        raise NotImplementedError

    def after_micro_step(self) -> None:
        pass

    def after_step(self, engine, step: int, logger) -> None:
        pass

    def checkpoint_extra(self) -> tuple[dict | None, bool]:
        """(extra files to save with the checkpoint, whether every rank saves)."""
        return None, False

    def export(self, engine, folder: Path, step: int) -> Path:
        raise NotImplementedError

    def close(self) -> None:
        pass


def start_engine(model, optimizer, lr_sched, params, ds_config: dict, world: int):
    """The DeepSpeed engine for `ds_config`. On one rank without ZeRO it skips the gradient
    "all-reduce" after each backward: the plain engine flattens every gradient into buffers,
    reduces them over the ranks and copies them back, which over one rank only copies. (ZeRO's
    reduction is part of its optimizer; `plain_engine_on_one_rank` is what avoids that one.)"""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_sched,
                                           config=ds_config, model_parameters=params)
    if world == 1 and not ds_config.get("zero_optimization", {}).get("stage"):
        engine.enable_backward_allreduce = False
    return engine


def run_training(recipe: Recipe, n_samples: int) -> Path | None:
    """Train with ``recipe`` to its total steps (resuming when the run folder holds a checkpoint);
    returns the exported model folder on rank 0, None on the other ranks. A collective call."""
    import torch

    from lego_core.data.shards import SkipStats
    from lego_core.engine import checkpoint as ckpt
    from lego_core.engine.config import engine_config, plain_engine_on_one_rank
    from lego_core.engine.logger import RunLogger
    from lego_core.engine.stream import batch_stream

    cfg, run, rank, world = recipe.cfg, recipe.run, recipe.rank, recipe.world
    resume_from = ckpt.start_run(run, rank=rank, overwrite=cfg.overwrite, resume=cfg.resume, outputs=recipe.outputs)

    torch.manual_seed(cfg.seed + rank)
    ds_config = engine_config(cfg.engine, world)     # a --deepspeed file's batch / accumulation win
    plain_engine_on_one_rank(ds_config, cfg.engine, world, resume_from)
    total = recipe.total_steps(n_samples)
    model, optimizer, lr_sched, params = recipe.build(ds_config, total)
    engine = start_engine(model, optimizer, lr_sched, params, ds_config, world)
    recipe.ready(engine, ds_config)

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    if resume_from is not None:
        state.update(ckpt.load_checkpoint(engine, resume_from, rank=rank))
        recipe.resume(resume_from)
    start = int(state["step"])
    logger = RunLogger(run, enabled=rank == 0, total_steps=total, start_step=start, progress=cfg.progress,
                       every=cfg.log_every, desc=recipe.name)
    if rank == 0:
        recipe.announce(total, n_samples)
        (run / recipe.config_file).write_text(json.dumps(
            {**asdict(cfg), "resolved": recipe.resolved(total, n_samples, ds_config)}, indent=1, default=str))
        logger.event("resume" if resume_from else "start", step=start, total_steps=total, world_size=world,
                     checkpoint=str(resume_from) if resume_from else None)

    if start >= total and (run / "model" / recipe.finished_marker).is_file():
        logger.event("done", step=start, steps_run=0, model=str(run / "model"))   # finished before
        logger.close()
        recipe.close()
        return run / "model" if rank == 0 else None

    stats = SkipStats()
    dataset, collate = recipe.dataset(stats)

    def loader():
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.engine.micro_batch, num_workers=cfg.workers,
                                           collate_fn=collate, drop_last=True,
                                           multiprocessing_context="spawn" if cfg.workers else None)

    batches = batch_stream(dataset, loader, int(state["epoch"]), int(state["batches_in_epoch"]))
    step, t0, counted = start, time.perf_counter(), 0
    ckpt_dir = run / "checkpoints"
    engine.train()
    while step < total:
        loss_sum, lr = 0.0, lr_sched.get_last_lr()[0]          # the rate this step uses
        for _ in range(cfg.engine.grad_accum):
            epoch, in_epoch, batch = recipe.next_batch(batches)
            loss, count = recipe.micro_step(engine, batch, step)
            engine.backward(loss)
            engine.step()
            recipe.after_micro_step()
            loss_sum += loss.item() / cfg.engine.grad_accum
            counted += count
        step += 1
        elapsed = time.perf_counter() - t0
        logger.step(step, loss=loss_sum, lr=lr, **{recipe.rate_name: counted * world / max(elapsed, 1e-9)},
                    epoch=epoch)
        recipe.after_step(engine, step, logger)
        if step % cfg.checkpoint_every == 0 or step == total:
            extra, every_rank = recipe.checkpoint_extra()
            ckpt.save_checkpoint(engine, ckpt_dir, step, {}, position={"epoch": epoch, "batches_in_epoch": in_epoch},
                                 rank=rank, keep=cfg.keep_checkpoints, extra=extra, every_rank=every_rank)
            logger.event("checkpoint", step=step)
    recipe.close()
    if stats.total and rank == 0:
        log.warning("skipped %s", stats.summary())
    out = recipe.export(engine, run / "model", step)
    logger.event("done", step=step, steps_run=step - start, model=str(out))
    logger.close()
    return out if rank == 0 else None


__all__ = ["Recipe", "run_training", "start_engine"]
