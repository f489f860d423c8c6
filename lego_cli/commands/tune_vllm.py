"""`lego tune-vllm`: visual instruction tuning of a LLaVA on curated shards, with DeepSpeed."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, engine_options, quiet


@click.command("tune-vllm", context_settings={"show_default": True})
@click.argument("shards", nargs=-1, required=True)
@click.option("--vllm", required=True, help="The base LLaVA: a save_pretrained folder or a hub id "
              "(the authors: llava-llama-2-13b-chat; e.g. llava-hf/llava-1.5-13b-hf).")
@click.option("--out", required=True, help="Run folder: checkpoints/, log.jsonl, tune-config.json, model/.")
@click.option("--epochs", default=3.0, help="Passes over the curated samples (paper: 3).")
@click.option("--max-steps", type=int, help="Optimizer steps (default: --epochs over the shards).")
@click.option("--lr", "learning_rate", default=2e-5, help="Peak AdamW learning rate (paper: 2e-5).")
@click.option("--warmup-ratio", default=0.03, help="Linear warmup share of the steps, then cosine decay to 0.")
@click.option("--weight-decay", default=0.0)
@click.option("--max-length", default=2048,
              help="Cut sequences (image tokens + question + answer) to this many tokens.")
@engine_options(micro_batch=(16, "Micro-batch per device (paper: 16 per GPU)."),
                grad_accum=(1, "Gradient accumulation steps."), zero_stage=3, offload_params=True)
@click.option("--no-gradient-checkpointing", is_flag=True, help="Faster, but keeps every activation.")
@click.option("--train-vision-tower", is_flag=True, help="Train the vision tower too (the paper freezes its "
              "pretrained CLIP; for a random tower, such as the kit's tiny ones).")
@click.option("--aspect", type=click.Choice(["crop", "pad"]), default="crop",
              help="Image preparation; use what `lego enrich` will use.")
@click.option("--workers", default=2, help="DataLoader workers per process.")
@click.option("--shuffle-buffer", default=1000)
@click.option("--resample", is_flag=True, help="Draw shards with replacement (multi-node runs with uneven shards).")
@click.option("--checkpoint-every", default=500)
@click.option("--keep-checkpoints", default=2)
@click.option("--resume", type=click.Path(file_okay=False),
              help="Resume from this checkpoint (default: the run's latest); the run's newer checkpoints move to "
                   "checkpoints/superseded/. Trust a checkpoint folder as you would code: DeepSpeed's "
                   "loader unpickles its files.")
@click.option("--overwrite", is_flag=True, help="Start the run over.")
@click.option("--seed", default=0)
@click.option("--log-every", default=10)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def command(ctx, shards, vllm, out, epochs, max_steps, learning_rate, warmup_ratio, weight_decay, max_length,
            engine, no_gradient_checkpointing, train_vision_tower, aspect, workers, shuffle_buffer, resample,
            checkpoint_every,
            keep_checkpoints, resume, overwrite, seed, log_every, as_json):
    """Tune a LLaVA to describe how an action is done in a scene: the input frame and a question
    (one of ten templates, drawn per sample and epoch, with the action label) -> curated.txt.

    \b
    The paper's recipe: the CLIP vision tower frozen, the projector and the language model
    trained, cross-entropy on the answer tokens only; 3 epochs, lr 2e-5 with a cosine schedule and
    3 % warmup, no weight decay, bf16 on GPUs that have it, gradient checkpointing, ZeRO-3.
    The result, OUT/model/, is a transformers LLaVA folder for `lego enrich --vllm` and
    `lego generate --vllm`. Rerunning with the same --out resumes from the latest checkpoint.

    \b
    SHARDS: curated shards (`lego curate` adds curated.txt), as brace patterns, globs or folders.

    \b
    Examples (one process; torchrun; SLURM, see scripts/slurm/tune_vllm.sbatch):
      lego tune-vllm curated/ --vllm llava-hf/llava-1.5-13b-hf --out runs/vllm-epic
      torchrun --nproc_per_node 8 -m lego_cli.main tune-vllm 'curated/epic-{000000..000099}.tar' \\
          --vllm llava-hf/llava-1.5-13b-hf --out runs/vllm-epic --offload-optimizer
      lego enrich 'data/epic-{000000..000099}.tar' --vllm runs/vllm-epic/model --out enriched/epic-%06d.tar
    """
    from lego_core.vllm.tune import TuneConfig, tune

    cfg = TuneConfig(
        shards=list(shards), vllm=vllm, out=out, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_length=max_length,
        gradient_checkpointing=not no_gradient_checkpointing, train_vision_tower=train_vision_tower, aspect=aspect,
        seed=seed, workers=workers,
        shuffle_buffer=shuffle_buffer, resample=resample, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, resume=resume, overwrite=overwrite, log_every=log_every,
        progress=not quiet(ctx),
        engine=engine,
    )
    model = tune(cfg)
    if model is None:          # not rank 0: the main process reports
        return
    echo_result({"model": str(model), "run": out} if as_json else str(model), as_json)
