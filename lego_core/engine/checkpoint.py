"""Checkpoints a crash can never half-write: DeepSpeed saves into `step-N.partial/`, every rank
adds its RNG state and its data position (`data-rank{R}.json`: each rank reads its own shards, so
ranks are at different points of their streams), then rank 0 writes `lego-state.json` (the step)
and renames the folder to `step-N/`. Resume takes the newest folder that has `lego-state.json`;
partial folders are swept away.

A run resumed from an older checkpoint (`--resume RUN/checkpoints/step-1000` while step-3000
exists) would save over, prune, and later auto-resume from the abandoned line's checkpoints; so
those newer ones are moved to `checkpoints/superseded/` first (never deleted: they are the user's).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

from lego_core.errors import BadInput

log = logging.getLogger("lego.engine")

_STEP = re.compile(r"^step-(\d+)$")
SUPERSEDED = "superseded"


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP.match(p.name)) and (p / "lego-state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def sweep_partial(folder: str | Path) -> None:
    """Remove checkpoints a killed run left half-written (rank 0, before training starts)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            unfinished = _STEP.match(p.name) and not (p / "lego-state.json").exists()
            if p.name.endswith((".partial", ".pruned")) or unfinished:
                shutil.rmtree(p, ignore_errors=True)


def prepare_run(run: str | Path, *, overwrite: bool, outputs: tuple[str, ...]) -> None:
    """Rank 0, before training: with `overwrite` remove a previous run's `outputs` (files or
    folders inside `run`), then make the folder and sweep half-written checkpoints."""
    run = Path(run)
    if overwrite and run.exists():
        for name in outputs:
            p = run / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    sweep_partial(run / "checkpoints")


def checkpoint_step(path: str | Path) -> int:
    """The step a finished checkpoint was saved at (its `lego-state.json`)."""
    return int(json.loads((Path(path) / "lego-state.json").read_text())["step"])


def _move_aside(folder: Path, paths: list[Path], why: str) -> Path:
    """Move `paths` (checkpoints in `folder`) into a new `folder/superseded/<why>-<time>/`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = folder / SUPERSEDED / f"{why}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = folder / SUPERSEDED / f"{why}-{stamp}-{n}"
    dest.mkdir(parents=True)
    for p in paths:
        os.replace(p, dest / p.name)
    return dest


def supersede_newer(folder: str | Path, resume: str | Path) -> Path | None:
    """Rank 0, before training from `resume`: move the finished checkpoints in `folder` saved at a
    later step than `resume` aside (returns where, or None when there were none). Otherwise the
    resumed run would collide with them at its first save, keep-K (which sorts by step) would
    delete its own new checkpoints, and the next auto-resume would pick the abandoned line."""
    folder, resume = Path(folder), Path(resume)
    step = checkpoint_step(resume)
    newer = [p for p in complete_checkpoints(folder)
             if int(_STEP.match(p.name).group(1)) > step and p.resolve() != resume.resolve()]
    if not newer:
        return None
    dest = _move_aside(folder, newer, f"after-{resume.name}")
    log.warning("resuming from %s, older than %s: moved %s to %s (delete them when no longer needed)",
                resume, newer[-1].name, ", ".join(p.name for p in newer), dest)
    return dest


def start_run(run: str | Path, *, rank: int, overwrite: bool, outputs: tuple[str, ...],
              resume: str | Path | None) -> Path | None:
    """What both trainers do before training, on every rank (a collective call): check `resume`
    (--resume), then on rank 0 `prepare_run` and, when resuming from a checkpoint older than the
    run's newest, `supersede_newer`. Returns the checkpoint to resume from: `resume`, else the
    run's newest, else None (a fresh start)."""
    import torch.distributed as dist

    run = Path(run)
    folder = run / "checkpoints"
    if resume is not None:
        resume = Path(resume)
        # every rank checks, so they all fail alike rather than some waiting at the barrier
        if not (resume / "lego-state.json").is_file():
            raise BadInput(f"--resume {resume}: not a finished checkpoint (no lego-state.json)")
        if overwrite and folder.resolve() in resume.resolve().parents:
            raise BadInput(f"--resume {resume} is inside {folder}, which --overwrite removes")
    if rank == 0:
        prepare_run(run, overwrite=overwrite, outputs=outputs)
        if resume is not None:
            supersede_newer(folder, resume)
    if dist.is_initialized():
        dist.barrier()
    return resume if resume is not None else latest_checkpoint(folder)


def rng_state() -> dict:
    """Every RNG's state as tensors, numbers and lists only, so it loads with weights_only=True
    (numpy's own state tuple holds an ndarray, which would need unpickling)."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trusted_tensors(path: str | Path, what: str):
    """One of our own checkpoint files (tensors, numbers, lists) loaded weights-only: a file that
    needs unpickling (planted, or from an older lego) is not run; None, with a warning."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        log.warning("%s: not loaded (%s needs only tensors and numbers; this file needs unpickling: %s)",
                    path, what, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def save_checkpoint(engine, folder: str | Path, step: int, state: dict, *, rank: int, keep: int,
                    position: dict | None = None, extra: dict | None = None, every_rank: bool = False) -> Path:
    """Save on every rank (a collective call); returns the final folder. `state` (rank 0's) goes
    into `lego-state.json`; `position` (this rank's data position, `epoch` and `batches_in_epoch`)
    into `data-rank{R}.json`, with the world size. `extra` (file name → object) is written by
    rank 0, or by every rank when `every_rank` (its names must then differ)."""
    import torch
    import torch.distributed as dist

    folder = Path(folder)
    tag = f"step-{step:08d}"
    partial = folder / f"{tag}.partial"
    world = dist.get_world_size() if dist.is_initialized() else 1
    engine.save_checkpoint(str(folder), tag=f"{tag}.partial", client_state={"lego": state}, save_latest=False)
    torch.save(rng_state(), partial / f"rng-rank{rank}.pt")
    if position is not None:
        (partial / f"data-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world_size": world, "epoch": int(position["epoch"]),
             "batches_in_epoch": int(position["batches_in_epoch"])}))
    if extra and (rank == 0 or every_rank):
        for name, obj in extra.items():
            torch.save(obj, partial / name)
    if dist.is_initialized():
        dist.barrier()
    final = folder / tag
    if rank == 0:
        (partial / "lego-state.json").write_text(json.dumps({"step": step, "world_size": world, **state}, indent=1))
        if final.exists():
            # start_run moves a newer line aside, so this takes two runs writing one folder, or a
            # hand-made copy; os.replace onto a non-empty folder would fail, and rank 0 alone, with
            # the other ranks left waiting at the barrier below
            dest = _move_aside(folder, [final], f"replaced-{tag}")
            log.warning("%s already existed: moved to %s", final, dest)
        # Not `lego_core.atomic`: every rank writes into this one folder (DeepSpeed names it from
        # the tag, so it cannot carry one writer's pid), and rank 0 renames it once all have
        # finished; `sweep_partial` removes what a killed run leaves.
        os.replace(partial, final)
        prune_checkpoints(folder, keep, final)
    if dist.is_initialized():
        dist.barrier()
    return final


def prune_checkpoints(folder: str | Path, keep: int, final: Path) -> None:
    """Keep the newest `keep` checkpoints by step; never `final` (the one just saved), even if a
    stray newer one is there. Each goes in one rename first (`step-N.pruned`, which is no longer
    a checkpoint), so a kill during the deletion never leaves a half-deleted `step-N` to resume
    from; `sweep_partial` removes what is left."""
    if keep <= 0:
        return
    for old in [p for p in complete_checkpoints(folder)[:-keep] if p != final]:
        gone = old.with_name(old.name + ".pruned")
        os.replace(old, gone)
        shutil.rmtree(gone, ignore_errors=True)


def data_position(path: str | Path, *, rank: int, world_size: int) -> dict:
    """This rank's data position (`epoch`, `batches_in_epoch`) in the checkpoint `path`. Where the
    checkpoint has none for it (written before positions were per rank, or by fewer ranks) or was
    written with another world size (the ranks' shards differ), the rank starts a new epoch: one
    past the latest any rank recorded (so it repeats none of the samples it may have seen), with
    a warning."""
    path = Path(path)
    mine = path / f"data-rank{rank}.json"
    if mine.is_file():
        pos = json.loads(mine.read_text())
        if int(pos.get("world_size", -1)) == world_size:
            return {"epoch": int(pos["epoch"]), "batches_in_epoch": int(pos["batches_in_epoch"])}
        why = f"it was saved by {pos.get('world_size')} rank(s), this run has {world_size}"
    else:
        why = f"it has no data position for rank {rank}"
    epochs = [int(json.loads(p.read_text()).get("epoch", 0)) for p in path.glob("data-rank*.json")]
    epochs.append(int(json.loads((path / "lego-state.json").read_text()).get("epoch", 0)))
    epoch = max(epochs) + 1
    log.warning("%s: %s; rank %d starts a new epoch (%d) instead of resuming mid-epoch", path, why, rank, epoch)
    return {"epoch": epoch, "batches_in_epoch": 0}


def load_checkpoint(engine, path: str | Path, *, rank: int) -> dict:
    """Restore model, optimizer, LR scheduler (DeepSpeed) and this rank's RNG; returns our state
    with this rank's data position (`data_position`)."""
    import torch.distributed as dist

    path = Path(path)
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    rng = path / f"rng-rank{rank}.pt"
    saved_rng = load_trusted_tensors(rng, "the RNG state") if rng.is_file() else None
    if saved_rng is not None:
        set_rng_state(saved_rng)
    state = json.loads((path / "lego-state.json").read_text()) | (client or {}).get("lego", {})
    world = dist.get_world_size() if dist.is_initialized() else 1
    return state | data_position(path, rank=rank, world_size=world)
