"""`lego train`: the LEGO diffusion model from shards, with DeepSpeed."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, engine_options, quiet


@click.command("train", context_settings={"show_default": True})
@click.argument("shards", nargs=-1, required=True)
@click.option("--out", required=True, help="Run folder: checkpoints/, log.jsonl, train-config.json, model/.")
@click.option("--base", default="stable-diffusion-v1-5/stable-diffusion-v1-5",
              help="Start from an SD-1.5-layout folder (the authors' choice) or an InstructPix2Pix folder / hub id.")
@click.option("--conditioning", default="description+joint",
              type=click.Choice(["label", "description", "description+image", "description+text", "description+joint"]),
              help="What the UNet cross-attends to (the paper's ablations).")
@click.option("--resolution", default=256)
@click.option("--max-steps", type=click.IntRange(1),
              help="Optimizer steps (default: the paper's 20,000, unless --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True),
              help="Passes over the shards instead of a step count (ignored with --max-steps).")
@click.option("--lr", "learning_rate", default=1e-4, help="AdamW learning rate (constant).")
@engine_options(micro_batch=(32, "Micro-batch per device (the authors: 32 per GPU)."),
                grad_accum=(4, "Gradient accumulation steps (the authors: 4)."), zero_stage=2)
@click.option("--no-ema", is_flag=True, help="Do not keep (and export) an EMA of the weights.")
@click.option("--ema-update", default="step", type=click.Choice(["step", "micro-batch"]),
              help="Update the EMA (decay 0.9999) after each optimizer step, or after each micro-batch as the "
                   "authors did (--grad-accum updates a step: a shorter averaging horizon).")
@click.option("--cfg-dropout", default=0.05, help="Each of: drop text, drop both, drop image.")
@click.option("--snr-gamma", type=float, default=None,
              help="Min-SNR-γ loss weighting (5 is usual; faster convergence). Default: the paper's plain MSE.")
@click.option("--cache-latents", is_flag=True, help="First write the VAE latents of both frames into new shards "
              "(RUN/latents/), then train on those without running the encoder.")
@click.option("--workers", default=2, help="DataLoader workers per process.")
@click.option("--shuffle-buffer", default=1000)
@click.option("--resample", is_flag=True, help="Draw shards with replacement (multi-node runs with uneven shards).")
@click.option("--checkpoint-every", default=500)
@click.option("--keep-checkpoints", default=3)
@click.option("--resume", type=click.Path(file_okay=False),
              help="Resume from this checkpoint (default: the run's latest); the run's newer checkpoints move to "
                   "checkpoints/superseded/. Trust a checkpoint folder as you would code: DeepSpeed's "
                   "loader unpickles its files.")
@click.option("--overwrite", is_flag=True, help="Start the run over.")
@click.option("--val-shards", multiple=True, help="Validation shards: loss and a sample grid every --val-every steps.")
@click.option("--val-every", default=500)
@click.option("--val-samples", default=4, help="Validation samples in the loss and the grid.")
@click.option("--val-steps", default=20, help="Sampling steps for the validation grid.")
@click.option("--seed", default=0)
@click.option("--log-every", default=10)
@click.option("--record-keys", is_flag=True,
              help="Write the keys each rank trained on to RUN/keys-rank{R}.txt (audit data splitting).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def command(ctx, shards, out, base, conditioning, resolution, max_steps, epochs, learning_rate, engine, no_ema,
            ema_update, cfg_dropout, snr_gamma,
            cache_latents, workers, shuffle_buffer, resample, checkpoint_every, keep_checkpoints, resume, overwrite,
            val_shards, val_every, val_samples, val_steps, seed, log_every, record_keys, as_json):
    """Train the LEGO diffusion model: InstructPix2Pix-style, conditioned on the VLLM's
    description and embeddings. The UNet and the conditioner (σ, μ, π) are trained; the VAE and
    the text encoder stay frozen. Rerunning with the same --out resumes from the latest checkpoint.

    \b
    Examples (one process on CPU or a GPU; torchrun; SLURM srun, see scripts/slurm/train.sbatch):
      lego train data/enriched-{000000..000099}.tar --base sd-v1-5/ --out runs/lego
      torchrun --nproc_per_node 8 -m lego_cli.main train data/*.tar --base sd-v1-5/ --out runs/lego
      srun lego train data/*.tar --out runs/lego --resample      # see scripts/slurm/train.sbatch
    """
    from lego_core.diffusion.train import TrainConfig, train

    cfg = TrainConfig(
        shards=list(shards), out=out, base=base, conditioning=conditioning, resolution=resolution,
        max_steps=max_steps, epochs=epochs, learning_rate=learning_rate, cfg_dropout=cfg_dropout, snr_gamma=snr_gamma,
        ema=not no_ema, ema_update=ema_update,
        seed=seed, workers=workers, shuffle_buffer=shuffle_buffer, resample=resample,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, resume=resume, overwrite=overwrite,
        log_every=log_every, record_keys=record_keys, val_shards=list(val_shards), val_every=val_every,
        val_samples=val_samples, val_steps=val_steps, progress=not quiet(ctx), engine=engine,
    )
    if cache_latents:
        from lego_core.diffusion.latents import cache_for_run

        cfg.shards = cache_for_run(cfg.shards, base, out, resolution, overwrite, progress=not quiet(ctx))
        cfg.cached_latents = True
    model = train(cfg)
    if model is None:          # not rank 0: the main process reports
        return
    echo_result({"model": str(model), "run": out} if as_json else str(model), as_json)

