"""The latent cache: VAE latents of both frames written into new shards, so training skips the
encoder (the VAE encode costs about 1.5 UNet forwards at SD-1.5's sizes).

`input_latent.npy` holds X's latent mode (unscaled, as InstructPix2Pix conditions on it);
`target_latent.npy` holds Y's latent distribution (mean and log-variance stacked on the channel
axis), so training still draws a fresh sample each step exactly as when encoding on the fly. With
cached latents the random horizontal flip is applied to the latents instead of the pixels.

Layout: one cache shard per input shard, with the same samples (``latents-%06d.tar`` for the
i-th input shard), so the cache splits across ranks exactly as the inputs do. ``manifest.json``
next to the shards records what the cache was built from (the input shards with their sizes and
mtimes, the resolution, the VAE, the cache format version); when any of it differs from the
current run the cache is wiped and rebuilt. A finished cache shard is complete (written to a temp
file and renamed), so a killed pass resumes at the first unfinished shard.

Several ranks share the work: rank 0 checks the manifest (and wipes the cache when it is stale),
then each rank encodes the input shards ``i`` with ``i % world_size == rank`` into its own files,
and all wait for each other before training. The cache folder must be visible to every rank (a
shared file system on multi-node runs, as for the checkpoints).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from datetime import timedelta
from typing import Callable

import numpy as np
import torch

log = logging.getLogger("lego.latents")

CACHE_VERSION = 2          # bump when the cache's contents change
MANIFEST = "manifest.json"


def _is_local(url: str) -> bool:
    return os.path.isfile(url)


def _input_identity(url: str) -> dict:
    if not _is_local(url):
        return {"url": url}
    st = os.stat(url)
    return {"url": os.path.abspath(url), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def vae_identity(base: str) -> dict:
    """The VAE's identity: where it comes from and a hash of its config (plus the weights' size and
    mtime for a local folder)."""
    from diffusers import AutoencoderKL

    local = os.path.isdir(base)
    ident: dict = {"base": os.path.abspath(base) if local else base}
    try:
        config = dict(AutoencoderKL.load_config(base, subfolder="vae"))
    except Exception as e:     # no config found: from_pretrained will say so when it is needed
        log.debug("no VAE config for %s: %s", base, e)
        config = {}
    config = {k: v for k, v in config.items() if k not in ("_name_or_path",)}
    ident["config_sha256"] = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    if local:
        weights = sorted(glob.glob(os.path.join(glob.escape(base), "vae", "diffusion_pytorch_model*")))
        ident["weights"] = [[os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in weights]
    return ident


def cache_manifest(urls: list[str], base: str, resolution: int) -> dict:
    """What a cache built now from ``urls`` would be: compared with the cache's manifest.json."""
    return {"version": CACHE_VERSION, "resolution": int(resolution), "vae": vae_identity(base),
            "inputs": [_input_identity(u) for u in urls]}


def _layout(urls: list[str], out_pattern: str):
    """Cache shard i for input shard i (`ShardMap`)."""
    from lego_core.data.shards import ShardMap

    return ShardMap(urls, out_pattern)


def _manifest_path(layout) -> str:
    return os.path.join(layout.folder, MANIFEST)


def prepare_cache(urls: list[str], base: str, out_pattern: str, *, resolution: int,
                  overwrite: bool = False) -> list[str]:
    """Make the cache folder match this run (rank 0 only, before any rank writes): keep it when its
    manifest matches, else wipe it (with a warning) and write the new manifest. ``overwrite`` always
    wipes. Returns the cache shard paths for ``urls``."""
    from lego_core.data.shards import read_manifest, write_manifest

    layout = _layout(urls, out_pattern)
    want = cache_manifest(urls, base, resolution)
    path = _manifest_path(layout)
    have = read_manifest(path)
    if overwrite:
        if layout.wipe(path):
            log.info("latent cache %s: cleared (--overwrite)", os.path.dirname(path))
    elif have != want:
        if have is None:
            stale = "no manifest" if layout.wipe(path) else None
        else:
            stale = "changed: " + ", ".join(k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k))
            layout.wipe(path)
        if stale:
            log.warning("latent cache %s does not match this run (%s): rebuilding it", os.path.dirname(path), stale)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if have != want or overwrite:
        write_manifest(path, want)
    return layout.outputs


def rank_barrier(hours: float = 24.0) -> Callable[[], None]:
    """A barrier over all ranks of the (initialised) default process group, on a gloo group of its
    own with a long timeout: ranks that finish their share of the cache early wait for the slowest
    longer than the default 10-minute collective timeout allows."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=timedelta(hours=hours))
    return lambda: dist.barrier(group=group)


@torch.no_grad()
def cache_latents(shards: list[str], base: str, out_pattern: str, *, resolution: int = 256, batch_size: int = 16,
                  device: str | None = None, progress: bool = True, overwrite: bool = False, rank: int = 0,
                  world_size: int = 1, barrier: Callable[[], None] | None = None) -> list[str]:
    """Write the cache (one cache shard per input shard; resumable: finished cache shards are
    kept while the manifest matches); returns the cache shards of ``shards``, in their order.

    With ``world_size`` > 1 every rank calls this with the same arguments and a ``barrier``: rank 0
    prepares the folder, each rank encodes the input shards ``i % world_size == rank``, and all
    return once the whole cache is written."""
    from lego_core.data import shards as sh

    urls = sh.expand_shards(shards)
    layout = _layout(urls, out_pattern)
    if rank == 0:
        prepare_cache(urls, base, out_pattern, resolution=resolution, overwrite=overwrite)
    paths = layout.outputs
    if barrier is not None:
        barrier()                  # nobody writes before rank 0 has checked (and maybe wiped) the folder
    todo = [i for i in range(len(urls)) if i % world_size == rank and not os.path.exists(paths[i])]
    if todo:
        _encode(urls, layout, todo, base, resolution=resolution, batch_size=batch_size, device=device,
                progress=progress)
    if barrier is not None:
        barrier()                  # every rank's share is written
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"latent cache incomplete: {missing[0]} missing (is {os.path.dirname(missing[0])} "
                           "shared by all ranks?)")
    return paths


def _encode(urls, layout, todo, base, *, resolution, batch_size, device, progress) -> None:
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from lego_core.data import shards as sh
    from lego_core.data.schema import INPUT, INPUT_LATENT, TARGET, TARGET_LATENT
    from lego_core.diffusion.build import channels_last_encoder
    from lego_core.diffusion.data import image_tensor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = channels_last_encoder(AutoencoderKL.from_pretrained(base, subfolder="vae")).to(device).eval()
    stats = sh.SkipStats()
    with tqdm(desc="cache latents", unit="sample", disable=not progress) as bar:
        for i in todo:
            layout.clean(i, any_pid=True)       # only this rank writes cache shard i
            with sh.ShardWriter(layout.outputs[i]) as writer:       # no placeholder: exactly this one file
                pending: list[dict] = []

                def flush():
                    pixels = torch.stack([image_tensor(s[f], resolution) for s in pending for f in (INPUT, TARGET)])
                    dist = vae.encode(pixels.to(device)).latent_dist
                    modes, params = dist.mode().cpu(), torch.cat([dist.mean, dist.logvar], dim=1).cpu()
                    for j, sample in enumerate(pending):
                        out = {k: v for k, v in sample.items() if not k.startswith("__url")}
                        out[INPUT_LATENT] = modes[2 * j].numpy().astype(np.float16)
                        out[TARGET_LATENT] = params[2 * j + 1].numpy().astype(np.float16)
                        writer.write(out)
                    bar.update(len(pending))
                    pending.clear()

                for sample in sh.iter_samples([urls[i]], stats=stats):
                    pending.append(sample)
                    if len(pending) == batch_size:
                        flush()
                if pending:
                    flush()
            if not writer.total:
                sh.write_empty_shard(layout.outputs[i])
    if stats.total:
        log.warning("latent cache: skipped %s", stats.summary())


def cache_for_run(shards, base, out, resolution, overwrite, *, progress):
    """`lego train --cache-latents`: the cache pass before training, into OUT/latents. On several
    ranks it starts the process group here (train() then reuses it: DeepSpeed's init_distributed
    keeps an initialised group) so the ranks can split the encoding by input shard and wait for
    each other; a failure tears it down."""
    from lego_core.engine.launch import detect_launch, init_distributed

    launch = detect_launch()
    device = barrier = None
    if launch.world_size > 1:
        device, _ = init_distributed(launch)
        barrier = rank_barrier()
    try:
        return cache_latents(shards, base, f"{out}/latents/latents-%06d.tar", resolution=resolution, device=device,
                             progress=progress and launch.rank == 0, overwrite=overwrite, rank=launch.rank,
                             world_size=launch.world_size, barrier=barrier)
    except BaseException:
        if barrier is not None:
            import torch.distributed as dist

            dist.destroy_process_group()    # not shutdown(): its barrier would wait on ranks in the cache's
        raise
