"""`lego import`: the LEGO authors' released checkpoints, VLLM, dataset and features -> lego's formats."""

from __future__ import annotations

import json

import click

from lego_cli.common import quiet


@click.group("import")
def command():
    """Bring the authors' released files into lego's formats, to run and score them here.

    \b
      checkpoint  their diffusion .ckpt (CompVis/Lightning) -> a LEGO model folder (--model)
      vllm        their LLaVA folder (original LLaVA layout) -> a transformers LLaVA folder (--vllm)
      dataset     their frames + {ego4d,epickitchen}_{train,val}.json (+ features) -> shards

    \b
    Examples:
      lego import checkpoint ego4d_diffusion_with_vllm_feature.ckpt --out models/lego-ego4d
      lego import vllm llava-llama-2-13b-chat-forecasting-finetune --out models/llava-lego
      lego import dataset LEGO_Data --split val --features vllm_features --out data/lego-val-%06d.tar
    """


@command.command("checkpoint", context_settings={"show_default": True})
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The model folder to write.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow full unpickling (runs code from the file) when weights-only loading is not enough.")
@click.option("--no-ema", is_flag=True, help="Use the raw UNet weights even when the file has EMA weights.")
@click.option("--base", type=click.Path(file_okay=False, exists=True),
              help="A diffusers folder whose unet/vae/text_encoder/scheduler configs (and tokenizer) to use "
                   "instead of SD-1.5's.")
@click.option("--tokenizer", type=click.Path(exists=True),
              help="CLIP vocabulary: bpe_simple_vocab_16e6.txt.gz or a CLIP tokenizer folder "
                   "[default: open_clip's bundled file, else the Hugging Face cache].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              help="Weight precision to store.")
@click.option("--resolution", type=click.IntRange(min=8), default=256,
              help="The resolution the model was trained at (the authors': 256), recorded in the folder's "
                   "lego.json as `lego generate`'s default --size.")
@click.option("--steps", type=click.IntRange(min=1), default=100,
              help="Sampling steps recorded as `lego generate`'s default --steps (the authors': 100).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def checkpoint(file, out, trust_pickle, no_ema, base, tokenizer, dtype, resolution, steps, overwrite, as_json):
    """Import a diffusion checkpoint of the authors' (CompVis names, PyTorch Lightning .ckpt).

    \b
    Writes a LEGO model folder: UNet (EMA weights when present), VAE, CLIP text encoder, SD-1.5's
    tokenizer and scheduler, and the conditioner from projection_img / projection_txt /
    self_attn_mix. The file is read with weights-only loading; --trust-pickle allows the full
    unpickling a Lightning file may need (it can run code: only for files you trust).

    \b
    Examples:
      lego import checkpoint ego4d_diffusion_with_vllm_feature.ckpt --out models/lego-ego4d
      lego generate frame.jpg "cut onion" --model models/lego-ego4d --vllm models/llava-lego
    """
    from dataclasses import asdict

    from lego_core.importers.checkpoint import import_checkpoint

    summary = import_checkpoint(file, out, trust_pickle=trust_pickle, ema=not no_ema, base=base,
                                tokenizer=tokenizer, overwrite=overwrite, dtype=dtype, resolution=resolution,
                                steps=steps)
    if as_json:
        click.echo(json.dumps(asdict(summary)))
    else:
        click.echo("\n".join(summary.lines()))


@command.command("vllm", context_settings={"show_default": True})
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The LLaVA folder to write.")
@click.option("--vision-tower", type=click.Path(file_okay=False, exists=True),
              help="The CLIP vision model folder [default: the one named in config.json, from a local "
                   "path or the Hugging Face cache].")
@click.option("--trust-pickle", is_flag=True, help="Allow full unpickling of pytorch_model*.bin files.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float16",
              help="Weight precision to store.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def vllm(folder, out, vision_tower, trust_pickle, dtype, overwrite, as_json):
    """Import an original-layout LLaVA folder (haotian-liu/LLaVA: Llama + model.mm_projector, the CLIP
    tower named in config.json) into a transformers LLaVA folder for --vllm.

    \b
    A single-linear projector (LLaVA v1, the authors' VLLM) is kept exact through lego's own
    projector variant, which `lego enrich` / `lego generate --vllm` load; a two-layer one
    (mlp2x_gelu) becomes transformers' own LlavaForConditionalGeneration.

    \b
    Example:
      lego import vllm llava-llama-2-13b-chat-forecasting-finetune --out models/llava-lego \\
           --vision-tower clip-vit-large-patch14
    """
    from dataclasses import asdict

    from lego_core.importers.llava import import_llava

    summary = import_llava(folder, out, vision_tower=vision_tower, trust_pickle=trust_pickle, dtype=dtype,
                           overwrite=overwrite)
    click.echo(json.dumps(asdict(summary)) if as_json else "\n".join(summary.lines()))


@command.command("dataset", context_settings={"show_default": True})
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--split", required=True, type=click.Choice(["train", "val"]),
              help="Which JSON to import (val is the paper's test set).")
@click.option("--out", required=True, help="Output shard pattern, e.g. data/lego-val-%06d.tar.")
@click.option("--dataset", "which", type=click.Choice(["ego4d", "epickitchen", "all"]), default="all",
              help="Which of the two datasets' JSON files to import.")
@click.option("--features", type=click.Path(file_okay=False, exists=True),
              help="The VLLM features folder (vllm_features/: {ego4d,epickitchen}/vllm_{image,text}_feature/...).")
@click.option("--limit", type=int, help="Only the first N actions.")
@click.option("--max-samples-per-shard", default=1000, help="Start a new shard after this many samples.")
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming an earlier run with the same --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def dataset(ctx, root, split, out, which, features, limit, max_samples_per_shard, overwrite, as_json):
    """Import the authors' dataset: frames + JSON (+ VLLM features) -> lego shards.

    \b
    ROOT holds {ego4d,epickitchen}_{train,val}.json and the frames (EgoGen/ego4d.fho/SPLIT/...,
    EgoGen/epickitchen/SPLIT/...). Each action becomes a sample: input.jpg (image_0), target.jpg
    (image_1), meta.json (label: "action"), enriched.txt (llava_forecast_finetune) and, with
    --features, vllm_img.npy / vllm_txt.npy. Rerunning resumes; bad actions are skipped and listed
    in a rejects file beside the shards.

    \b
    Example:
      lego import dataset LEGO_Data --split val --features vllm_features --out data/lego-val-%06d.tar
      lego inspect data/lego-val-*.tar
    """
    from dataclasses import asdict

    from lego_core.importers.dataset import import_dataset

    summary = import_dataset(root, split, out, which=which, features=features, limit=limit,
                             max_samples_per_shard=max_samples_per_shard, overwrite=overwrite,
                             progress=not quiet(ctx))
    click.echo(json.dumps(asdict(summary)) if as_json else "\n".join(summary.lines()))
