"""Who am I in the job? One answer for plain `python`/`lego`, torchrun, the deepspeed launcher
and SLURM's srun, turned into the RANK/WORLD_SIZE/MASTER_* variables torch.distributed reads.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

log = logging.getLogger("lego.engine")


@dataclass(frozen=True)
class DistEnv:
    launcher: str          # "single", "torchrun", "deepspeed", "slurm"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_environ(self) -> dict[str, str]:
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_head_node(nodelist: str) -> str:
    """The first host of a SLURM node list, what `scontrol show hostnames | head -1` prints, without
    needing scontrol on the compute node: "gpu[03-05,09],cpu1" -> "gpu03", "node[1-2]-ib" ->
    "node1-ib", "rack[1-2]-node[01-04]" -> "rack1-node01". Commas inside brackets separate ranges,
    not hosts, so the list is split at top-level commas only; each bracket group of the first host
    becomes its first value, as written (zero padding kept)."""
    depth, first = 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            break
        if depth < 0 or depth > 1:
            raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
        first += ch
    if depth != 0:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    host = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0].strip(), first).strip()
    if not host or any(c in host for c in "[] "):
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    return host


# Slurm's step ids for the batch script, the extern step (pam_slurm_adopt), an interactive salloc
# step and a pending step are all 0xFFFFFFFx; ordinary srun steps count up from 0.
_SLURM_SPECIAL_STEP = 0xFFFFFFF0


def _srun_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task that srun launched. sbatch's batch step also has
    SLURM_PROCID=0 and SLURM_NTASKS=N (the job's), but it is one process: taking it for rank 0 of N
    would wait forever for N-1 ranks that never start. srun sets SLURM_STEP_ID (and the obsolete
    SLURM_STEPID) to the step's number; the batch, extern and interactive steps have none, a name,
    or one of the special values."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", "")).strip()
    return step.isascii() and step.isdigit() and int(step) < _SLURM_SPECIAL_STEP


def detect_launch(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables. torchrun and the deepspeed launcher set RANK & co. (also
    inside srun, where they win); srun alone sets SLURM_PROCID/NTASKS/LOCALID in a job step; else
    (a plain `lego` in an sbatch script, among others) one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
        return DistEnv(launcher, int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and _srun_step(env):
        job = int(env.get("SLURM_JOB_ID", "0"))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return DistEnv("slurm", int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or slurm_head_node(nodelist),
                       int(env.get("MASTER_PORT") or 20000 + job % 20000))
    if int(env.get("SLURM_NTASKS") or 1) > 1:
        log.warning("SLURM_NTASKS=%s but this is not an srun task (the job's batch script?): running as one "
                    "process; start the ranks with srun or torchrun (see scripts/slurm/train.sbatch)",
                    env["SLURM_NTASKS"])
    return DistEnv("single", 0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT") or free_port()))


def device_and_backend(local_rank: int) -> tuple[str, str]:
    """CUDA + NCCL when there is a GPU, else CPU + gloo (and DeepSpeed told so explicitly)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return f"cuda:{local_rank % torch.cuda.device_count()}", "nccl"
    os.environ["DS_ACCELERATOR"] = "cpu"
    return "cpu", "gloo"


_EXPORTED: dict[str, str | None] = {}     # what init_distributed overwrote in os.environ


def init_distributed(dist: DistEnv) -> tuple[str, str]:
    """Export the variables, pick device/backend, and start DeepSpeed's process group."""
    for key, value in dist.as_environ().items():
        _EXPORTED.setdefault(key, os.environ.get(key))
        os.environ[key] = value
    device, backend = device_and_backend(dist.local_rank)
    import contextlib
    import sys

    import deepspeed

    # DeepSpeed print()s its op builds ("... built successfully") to stdout, where results go.
    with contextlib.redirect_stdout(sys.stderr):
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   rank=dist.rank, world_size=dist.world_size)
    return device, backend


def shutdown() -> None:
    """Destroy the process group before exit: two-process CPU runs otherwise abort now and then
    at interpreter shutdown (see ENVIRONMENT.md)."""
    import torch.distributed as dist

    try:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
                _forget_deepspeed_groups()
    finally:
        _restore_environ()


def _restore_environ() -> None:
    """Undo init_distributed's exports: a later run in this process, or a child process, must not
    take a finished single-process run's RANK/MASTER_PORT for a launcher's (the port may still be
    bound here, and the child would fail with EADDRINUSE)."""
    for key, old in _EXPORTED.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    _EXPORTED.clear()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process-group handles in module globals; after the group is destroyed
    they would break the next `init_distributed` in the same process (the demo trains twice)."""
    import deepspeed.comm.comm as ds_comm
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name[1:].isupper() and value is not None:
            setattr(groups, name, {} if isinstance(value, dict) else None)
    ds_comm.cdb = None
