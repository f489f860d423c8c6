"""`lego generate`: a frame + action prompts -> action frames."""

from __future__ import annotations

import json

import click

from lego_cli.common import generation_options, quiet


@click.command("generate", context_settings={"show_default": True})
@click.argument("image", required=False)
@click.argument("prompts", nargs=-1)
@click.option("--model", envvar="LEGO_MODEL", show_envvar=True, help="LEGO diffusion model folder (or hub id).")
@click.option("--vllm", help="LLaVA folder: describe the action first and condition on its embeddings.")
@click.option("-o", "--out", help="Output file (one prompt) or folder [default: the current folder].")
@generation_options()
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False),
              help='JSONL of {"key", "image", "prompt"} requests; writes OUT/{key}.png (.jpg '
                   'with --authors-postprocess), model loaded once.')
@click.option("--overwrite", is_flag=True, help="With --batch: redo keys whose image already exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@click.pass_context
def command(ctx, image, prompts, model, vllm, out, generate_options, batch_file, overwrite, as_json):
    """Generate the action frame: the same scene, same viewpoint, with the action being done.

    \b
    IMAGE is the egocentric frame; each PROMPT is an action ("cut onion") and gets its own image,
    named after the prompt. With --vllm the VLLM's description of how to do the action is
    printed too. Without it the prompt is the description (what label/description models expect).
    Several prompts (and --batch requests) are denoised --batch-size images at a time; the VLLM
    is freed once it has described, before the diffusion model needs the memory.

    \b
    Examples:
      lego generate frame.jpg "cut onion" --model runs/lego/model
      lego generate frame.jpg "open fridge" "wash plate" --vllm runs/llava -o out/ --num-images 4
      lego generate --batch requests.jsonl --model runs/lego/model -o generated/ --json
    """
    from lego_core.diffusion.generate import (
        ActionFrameGenerator, GenerateOptions, load_image, output_paths, read_batch_file, resolve_model,
    )
    from lego_core.diffusion.generate_files import generate_batch, generate_prompts
    from lego_core.errors import BadInput

    options = GenerateOptions(**generate_options, progress=not quiet(ctx))
    if batch_file:
        if image or prompts:
            raise BadInput("--batch takes its images and prompts from the file; give no IMAGE or PROMPT")
        requests = read_batch_file(batch_file)
    else:
        if not image or not prompts:
            raise BadInput('give an IMAGE and at least one PROMPT, e.g. lego generate frame.jpg "cut onion"')
        if any(not p.strip() for p in prompts):
            raise BadInput('empty prompt: say which action, e.g. "cut onion"')
        frame = load_image(image)
        paths = output_paths(list(prompts), out, image, options.num_images, options.suffix)
    # One shot: the VLLM describes everything, is freed, then the diffusion model gets the memory.
    generator = ActionFrameGenerator(resolve_model(model), vllm, options, keep_vllm=False)

    def report(records, result):
        for record in records:
            click.echo(json.dumps(record) if as_json else record["output"])
        if vllm and not as_json:
            click.echo(f"  {result.description}")

    if not batch_file:
        generate_prompts(generator, frame, list(prompts), paths, on_written=report)
        return
    summary = generate_batch(generator, requests, out or ".", overwrite=overwrite, on_written=report)
    for line in summary.lines():
        click.echo(f"lego: {line}", err=True)
