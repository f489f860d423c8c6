"""`lego evaluate`: the paper's metrics for generated frames, a table and a report."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, generation_options, quiet


@click.command("evaluate", context_settings={"show_default": True})
@click.argument("shards", nargs=-1)
@click.option("--generated", "-g", multiple=True,
              help="Generated images: a folder (matched by relative path without extension) or shards (by key). "
                   "Repeat, optionally as NAME=PATH, for one table row per set.")
@click.option("--reference", "-r",
              help="Ground truth: shards (target.jpg, input.jpg, descriptions) or a folder of images "
                                        "(KEY.txt beside an image is its description).")
@click.option("--model", "models", multiple=True,
              help="Generate-first mode: a LEGO diffusion model folder; generates for every sample of SHARDS, then "
                   "evaluates. Repeat (NAME=DIR) for the ablation table.")
@click.option("--vllm", help="Generate-first mode: the LLaVA folder for models that need VLLM embeddings.")
@click.option("--metrics", "metrics", default="psnr,lpips,fid,clip,blip,egovlp,egovlp+",
              help="Comma-separated subset of "
                   "psnr,psnr_changed,lpips,fid,clip,blip,egovlp,egovlp+. In the default set, EgoVLP scores without a "
                   "checkpoint (and BLIP without descriptions) are left out with a warning. psnr_changed (not in the "
                   "paper; needs input frames): PSNR over the pixels the action changed (|ground truth - input| > 0.1) "
                   "and over the rest, for the generated and the input frame.")
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Folder for metrics.json, samples.csv and report.html (several sets: one "
                   "subfolder each plus table.csv). Without it, only the table is printed.")
@click.option("--lpips-net", type=click.Choice(["squeeze", "alex", "vgg"]), default="squeeze", help="LPIPS backbone.")
@click.option("--lpips-weights", type=click.Path(dir_okay=False),
              help="The backbone's torchvision checkpoint (e.g. squeezenet1_1-b8a52dc0.pth); default: the torch cache "
                   "($TORCH_HOME/hub/checkpoints).")
@click.option("--lpips-authors-range", is_flag=True,
              help="Feed LPIPS [0,1] images, as the authors' code did by mistake (LPIPS expects [-1,1]); only to "
                   "reproduce their published LPIPS numbers.")
@click.option("--fid-weights", type=click.Path(dir_okay=False),
              help="InceptionV3 FID weights (weights-inception-2015-12-05-6726825d.pth); default: the torch cache.")
@click.option("--fid-model",
              help="A transformers vision model folder whose pooled output replaces InceptionV3's features.")
@click.option("--clip-model", default="openai/clip-vit-large-patch14",
              help="CLIP folder or cached hub id (CLIP image score, and the text encoder of the BLIP score).")
@click.option("--blip-model", "blip_models", multiple=True,
              help="BLIP captioning folder or cached hub id, as TAG=PATH (column blip_TAG); repeatable. "
                   "[default: b=Salesforce/blip-image-captioning-base, l=Salesforce/blip-image-captioning-large]")
@click.option("--blip-text-encoder", type=click.Choice(["clip", "egovlp"]), default="clip",
              help="Text encoder of the BLIP score: CLIP (the paper's text) or EgoVLP's "
                   "DistilBERT branch (the authors' code; the --egovlp checkpoint).")
@click.option("--egovlp", "egovlp", type=click.Path(dir_okay=False),
              help="EgoVLP checkpoint: egovlp.pth (Ego4D) or epic_mir_plus.pth (EPIC-KITCHENS), as the authors publish "
                   "them. Default: egovlp.pth (epic_mir_plus.pth with --egovlp-frames 16) in the torch cache.")
@click.option("--egovlp-frames", type=int,
              help="EgoVLP clip length: 4 for Ego4D, 16 for EPIC-KITCHENS.  [default: 16 for an "
                   "epic* checkpoint, else 4]")
@click.option("--egovlp-tokenizer", default="distilbert-base-uncased",
              help="DistilBERT tokenizer folder or cached hub id (EgoVLP text score only).")
@click.option("--generated-field",
              help="Generated shards: the image field (default: the first of generated.png/jpg, output.png/jpg "
                   "that the set has, for every sample; target.jpg only if it has none).")
@click.option("--batch-size", default=32, help="Images per batch through every model.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available).")
@click.option("--workers", default=4, help="Threads decoding images.")
@click.option("--report-metric",
              help="Per-image metric that ranks the report's best/worst samples (default: "
                   "lpips, else clip, else psnr).")
@click.option("--report-samples", default=8, help="Samples per report grid (best, worst, random).")
@click.option("--seed", default=0, help="Seed of the report's random samples (and of generate-first mode's images).")
@generation_options(skip=("seed", "device", "batch_size", "num_images"))   # generate-first mode's
@click.option("--max-member-mb", type=click.FloatRange(min=0, min_open=True), default=64,
              help="Leave unread (and report as skipped) any file in a shard larger than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def command(ctx, shards, generated, reference, models, vllm, metrics, out, lpips_net, lpips_weights,
            lpips_authors_range, fid_weights, fid_model, clip_model, blip_models, blip_text_encoder, egovlp,
            egovlp_frames, egovlp_tokenizer, generated_field, batch_size, device, workers, report_metric,
            report_samples, seed, generate_options, max_member_mb, as_json):
    """Score generated action frames against the ground truth with the paper's metrics: EgoVLP and
    EgoVLP+ (the frame, or the input frame then the frame, as a clip in EgoVLP's video embedding
    space), PSNR, LPIPS, FID, CLIP (image-image) and BLIP (caption vs description). Writes
    metrics.json (mean, std, n per metric; value and n for FID), a per-sample CSV and a
    self-contained report.html.

    \b
    Two modes:
      --generated DIR_OR_SHARDS --reference DIR_OR_SHARDS   score existing images
      SHARDS... --model DIR [--vllm DIR]                    generate for every sample first
    Keys found on one side only are reported and the rest evaluated. Model weights are never
    downloaded: they come from local folders or the Hugging Face / torch caches.

    \b
    Examples:
      lego evaluate --generated out/gen --reference 'data/epic-val-{000000..000009}.tar' -o eval/
      lego evaluate -g labels=gen/labels -g joint=gen/joint -r data/val/ --metrics psnr,lpips,fid -o ablation/
      lego evaluate --generated gen/ --reference gt/ --metrics lpips --lpips-authors-range --json
      lego evaluate -g gen/ -r data/val/ --metrics egovlp,egovlp+ --egovlp epic_mir_plus.pth --egovlp-frames 16
      lego evaluate data/val/ --model runs/lego-joint --vllm runs/llava -o eval/
    """
    from lego_core.errors import BadInput
    from lego_core.evaluation import evaluate_models
    from lego_core.metrics.runner import EvalConfig, evaluate

    if quiet(ctx):
        import transformers

        transformers.utils.logging.disable_progress_bar()
    explicit = ctx.get_parameter_source("metrics") != click.core.ParameterSource.DEFAULT
    cfg_kwargs = dict(
        metrics=tuple(metrics.split(",")), metrics_explicit=explicit, batch_size=batch_size, device=device,
        workers=workers, lpips_net=lpips_net, lpips_weights=lpips_weights, lpips_authors_range=lpips_authors_range,
        fid_weights=fid_weights, fid_model=fid_model, clip_model=clip_model, generated_field=generated_field,
        blip_text_encoder=blip_text_encoder, egovlp=egovlp, egovlp_frames=egovlp_frames,
        egovlp_tokenizer=egovlp_tokenizer,
        report_metric=report_metric, report_samples=report_samples, seed=seed, max_member_mb=max_member_mb,
    )
    if blip_models:
        cfg_kwargs["blip_models"] = tuple(blip_models)
    cfg = EvalConfig(**cfg_kwargs)
    progress = not quiet(ctx)
    if models:
        if generated or reference:
            raise BadInput("--model generates the images itself: give SHARDS and --model, not --generated/--reference")
        if not shards:
            raise BadInput("--model needs the SHARDS to generate for (e.g. lego evaluate data/val/ --model DIR)")
        result = evaluate_models(list(shards), list(models), cfg, out=out, vllm=vllm, progress=progress,
                                 generate_options={**generate_options, "seed": seed, "device": device})
    else:
        if shards:
            raise BadInput(f"unexpected argument {shards[0]}: SHARDS go with --model; otherwise use "
                           "--generated and --reference")
        if not generated or not reference:
            raise BadInput("give --generated and --reference (or SHARDS with --model)")
        result = evaluate(list(generated), reference, cfg, out=out, progress=progress)
    if as_json:
        echo_result(result.summary(), True)
        return
    echo_result("\n".join(result.lines()))
