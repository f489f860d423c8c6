"""`lego enrich`: the VLLM's description R and embeddings H_i, H_t added to every sample."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, question_option, quiet


@click.command("enrich", context_settings={"show_default": True})
@click.argument("shards", nargs=-1, required=True)
@click.option("--vllm", required=True, help="The (tuned) LLaVA: a save_pretrained folder or a hub id.")
@click.option("--out", required=True,
              help="Output shard pattern, e.g. enriched/shard-%06d.tar: input shard i -> output shard i.")
@click.option("--batch-size", default=16, help="Samples per generate call (left-padded).")
@click.option("--num-shards", type=int,
              help="Split the input shards across K tasks (default: $SLURM_ARRAY_TASK_COUNT, else 1).")
@click.option("--shard-index", type=int,
              help="This task's part, 0..K-1 (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0).")
@click.option("--max-text-tokens", default=77,
              help="Keep at most this many rows of H_t (the diffusion model uses 77); 0 keeps all.")
@click.option("--max-new-tokens", default=1024, help="Stop a description after this many tokens (paper: 1024).")
@click.option("--greedy", is_flag=True,
              help="Greedy decoding instead of sampling: outputs independent of seed and batching.")
@click.option("--temperature", default=0.2, help="Sampling temperature (paper: 0.2).")
@click.option("--seed", default=0, help="Sampling seed.")
@click.option("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), default="auto",
              help="Model dtype; auto: float16 on a GPU, float32 on the CPU.")
@click.option("--aspect", type=click.Choice(["crop", "pad"]), default="crop",
              help="crop: the processor's resize + centre crop (as the authors); pad: pad to a square first.")
@question_option
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="JSONL of skipped samples with reasons (default: beside the shards, one per task).")
@click.option("--overwrite", is_flag=True, help="Redo this task's finished output shards instead of skipping them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def command(ctx, shards, vllm, out, batch_size, num_shards, shard_index, max_text_tokens, max_new_tokens, greedy,
            temperature, seed, device, dtype, aspect, question, rejects, overwrite, as_json):
    """Run the VLLM over every sample: add enriched.txt (R), vllm_img.npy (H_i) and vllm_txt.npy (H_t).

    \b
    R: the VLLM's answer to a fixed question about how to do the sample's action in its input frame
       (the authors' unless --question; it is recorded in the sidecar, and a rerun into the same
       --out with another question is refused).
    H_i: the projector output for the image tokens, M x D float16 (LLaVA-13B: 256 x 5120 = 2.6 MB).
    H_t: the last hidden state (before lm_head) of each generated token, n x D float16,
         cut to --max-text-tokens rows. Every other file of a sample is copied unchanged.
    Decoding samples at --temperature with --seed (the paper's way): the outputs then depend on
    the seed AND on how samples are batched (--batch-size, shard contents). With --greedy they
    depend on neither.

    \b
    Each input shard becomes the output shard with the same index; rerunning the same command
    skips finished output shards (a killed run leaves none half-written). In a SLURM job array each
    task takes every K-th input shard (see scripts/slurm/enrich.sbatch); all tasks share --out.
    Unusable samples are skipped and listed in the rejects file with the reason.

    \b
    SHARDS: brace patterns, globs, files or folders of .tar shards.

    \b
    Examples:
      lego enrich 'data/epic-{000000..000099}.tar' --vllm runs/vllm-epic --out enriched/epic-%06d.tar
      lego enrich shards/ --vllm llava-hf/llava-1.5-7b-hf --out out/enriched/ --greedy --batch-size 8
      sbatch --array=0-7 scripts/slurm/enrich.sbatch   # 8 disjoint parts, one GPU each
    """
    from lego_core.vllm.enrich import EnrichConfig, enrich

    cfg = EnrichConfig(
        shards=list(shards), vllm=vllm, out=out, batch_size=batch_size, num_shards=num_shards,
        shard_index=shard_index, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens, greedy=greedy,
        temperature=temperature, seed=seed, device=device, dtype=dtype, aspect=aspect, question=question,
        rejects=rejects, overwrite=overwrite,
    )
    summary = enrich(cfg, progress=not quiet(ctx))
    echo_result(summary.to_dict() if as_json else "\n".join(summary.lines()), as_json)
