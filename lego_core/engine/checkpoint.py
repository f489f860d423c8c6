"""Checkpoints a crash can never half-write: DeepSpeed saves into `step-N.partial/`, every rank
adds its RNG state, then rank 0 writes `lego-state.json` and renames the folder to `step-N/`.
Resume takes the newest folder that has `lego-state.json`; partial folders are swept away.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

_STEP = re.compile(r"^step-(\d+)$")


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
            if p.name.endswith(".partial") or (_STEP.match(p.name) and not (p / "lego-state.json").exists()):
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


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, folder: str | Path, step: int, state: dict, *, rank: int, keep: int,
                    extra: dict | None = None, every_rank: bool = False) -> Path:
    """Save on every rank (a collective call); returns the final folder. `extra` (file name →
    object) is written by rank 0, or by every rank when `every_rank` (its names must then differ)."""
    import torch
    import torch.distributed as dist

    folder = Path(folder)
    tag = f"step-{step:08d}"
    partial = folder / f"{tag}.partial"
    engine.save_checkpoint(str(folder), tag=f"{tag}.partial", client_state={"lego": state}, save_latest=False)
    torch.save(rng_state(), partial / f"rng-rank{rank}.pt")
    if extra and (rank == 0 or every_rank):
        for name, obj in extra.items():
            torch.save(obj, partial / name)
    if dist.is_initialized():
        dist.barrier()
    final = folder / tag
    if rank == 0:
        (partial / "lego-state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        os.replace(partial, final)
        for old in complete_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return final


def load_checkpoint(engine, path: str | Path, *, rank: int) -> dict:
    """Restore model, optimizer, LR scheduler (DeepSpeed) and this rank's RNG; returns our state."""
    import torch

    path = Path(path)
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    rng = path / f"rng-rank{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "lego-state.json").read_text()) | (client or {}).get("lego", {})
