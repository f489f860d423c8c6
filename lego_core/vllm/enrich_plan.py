"""`lego enrich`'s bookkeeping, apart from the model: which input shards a task takes (the SLURM
job array split), what is already done, the rejects and the manifest kept beside the output, the
storage a run adds and the seed of each batch. Standard library only."""

from __future__ import annotations

import hashlib
import json
import os

from lego_core.atomic import write_atomic
from lego_core.errors import BadInput

SLURM_COUNT, SLURM_ID, SLURM_MIN, SLURM_STEP = (
    "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


def resolve_task(num_shards: int | None, shard_index: int | None, env: dict | None = None) -> tuple[int, int]:
    """(I, K) from the options, else from a SLURM job array's environment, else (0, 1).

    SLURM numbers array tasks from SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP
    (``--array=1-8`` gives IDs 1..8): I = (ID - MIN) / STEP.
    """
    env = os.environ if env is None else env
    if (num_shards is None) != (shard_index is None):
        if num_shards is None and SLURM_COUNT in env:
            num_shards = _env_int(env, SLURM_COUNT)
        elif shard_index is None and SLURM_ID in env:
            shard_index = _slurm_index(env)
        else:
            raise BadInput("give both --num-shards K and --shard-index I (or neither, inside a SLURM job array)")
    if num_shards is None:
        if SLURM_COUNT in env and SLURM_ID in env:
            num_shards, shard_index = _env_int(env, SLURM_COUNT), _slurm_index(env)
        else:
            num_shards, shard_index = 1, 0
    if num_shards < 1:
        raise BadInput(f"--num-shards must be >= 1, not {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(f"--shard-index must be in 0..{num_shards - 1} for --num-shards {num_shards}, not {shard_index}")
    return shard_index, num_shards


def _env_int(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise BadInput(f"{name}={env[name]!r} is not an integer") from None


def _slurm_index(env) -> int:
    task_id = _env_int(env, SLURM_ID)
    low = _env_int(env, SLURM_MIN) if SLURM_MIN in env else 0
    step = _env_int(env, SLURM_STEP) if SLURM_STEP in env else 1
    return (task_id - low) // max(step, 1)


def my_part(n_inputs: int, shard_index: int, num_shards: int) -> list[int]:
    """The input shard indices task `shard_index` of `num_shards` enriches (round robin)."""
    return list(range(shard_index, n_inputs, num_shards))


def count_samples(url: str) -> int | None:
    """Samples in a local shard from its tar headers (None for remote URLs or unreadable shards)."""
    from lego_core.data.shards import is_remote, read_keys

    if is_remote(url):
        return None
    try:
        return len(read_keys([url]))
    except BadInput:
        return None


def prune_rejects(path: str, redo_urls: set[str], truncate: bool) -> None:
    """Keep the reject lines of shards that stay finished; drop those of shards about to be redone."""
    if truncate or not os.path.exists(path):
        write_atomic(path, "")
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("url") in redo_urls:
                continue
        except ValueError:
            continue
        keep.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(keep))


def check_manifest(path: str, inputs: list[str], outputs: list[str], overwrite: bool) -> None:
    """Refuse to resume into an --out that was filled from a different list of input shards."""
    if overwrite or not os.path.exists(path):
        return
    try:
        before = json.loads(open(path, encoding="utf-8").read()).get("inputs")
    except (OSError, ValueError):
        return
    if before is None or before == inputs:
        return
    if any(os.path.exists(o) for o in outputs):
        raise BadInput(f"{path}: this --out was written from a different list of input shards "
                       f"({len(before)} before, {len(inputs)} now); use another --out or --overwrite")


def storage_estimate(m: int, d: int, max_text_tokens: int, max_new_tokens: int) -> tuple[int, str]:
    """(bytes per sample added at most, a sentence saying so) for H_i (m x d) and H_t (<= n x d)."""
    n = min(max_text_tokens, max_new_tokens) if max_text_tokens else max_new_tokens
    img, txt = m * d * 2, n * d * 2
    total = img + txt + 2 * 512 + 4096  # + npy/tar headers and the description
    text = (f"each sample gains up to {megabytes(total)}: H_i {m} x {d} float16 = {megabytes(img)}, "
            f"H_t <= {n} x {d} float16 = {megabytes(txt)}"
            + ("" if max_text_tokens else " (no --max-text-tokens: bounded only by --max-new-tokens)"))
    return total, text


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def batch_seed(seed: int, shard: int, batch: int) -> int:
    """The sampling seed of one batch: fixed by (seed, input shard index, batch number in the shard),
    so a resumed run draws what an uninterrupted one would have."""
    digest = hashlib.sha256(f"lego-enrich-{seed}-{shard}-{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
