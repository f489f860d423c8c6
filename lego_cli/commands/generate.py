"""`lego generate`: a frame + action prompts -> action frames."""

from __future__ import annotations

import json

import click

from lego_cli.common import quiet


@click.command("generate", context_settings={"show_default": True})
@click.argument("image", required=False)
@click.argument("prompts", nargs=-1)
@click.option("--model", envvar="LEGO_MODEL", show_envvar=True, help="LEGO diffusion model folder (or hub id).")
@click.option("--vllm", help="LLaVA folder: describe the action first and condition on its embeddings.")
@click.option("-o", "--out", help="Output file (one prompt) or folder [default: the current folder].")
@click.option("--steps", default=100, help="Denoising steps (Euler ancestral).")
@click.option("--guidance", default=7.5, help="Text guidance scale s_T.")
@click.option("--image-guidance", default=1.5, help="Image guidance scale s_I.")
@click.option("--seed", default=0, help="Random seed: same inputs and seed, same image.")
@click.option("--size", default=256, help="The model's working resolution (square).")
@click.option("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available).")
@click.option("--greedy", is_flag=True, help="Greedy VLLM decoding (else sampling at temperature 0.2, seeded).")
@click.option("--max-new-tokens", default=1024, help="Longest VLLM description, in tokens.")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False),
              help='JSONL of {"key", "image", "prompt"} requests; writes OUT/{key}.png, model loaded once.')
@click.option("--overwrite", is_flag=True, help="With --batch: redo keys whose image already exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@click.pass_context
def command(ctx, image, prompts, model, vllm, out, steps, guidance, image_guidance, seed, size, device, greedy,
            max_new_tokens, batch_file, overwrite, as_json):
    """Generate the action frame: the same scene, same viewpoint, with the action being done.

    \b
    IMAGE is the egocentric frame; each PROMPT is an action ("cut onion") and gets its own image,
    named after the prompt. With --vllm the VLLM's description of how to do the action is
    printed too. Without it the prompt is the description (what label/description models expect).

    \b
    Examples:
      lego generate frame.jpg "cut onion" --model runs/lego/model
      lego generate frame.jpg "open fridge" "wash plate" --vllm runs/llava -o out/
      lego generate --batch requests.jsonl --model runs/lego/model -o generated/ --json
    """
    from lego_core.diffusion.generate import (
        ActionFrameGenerator, GenerateOptions, load_image, output_paths, read_batch_file, resolve_model, save_image,
    )
    from lego_core.errors import BadInput

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
        paths = output_paths(list(prompts), out, image)
    options = GenerateOptions(steps=steps, guidance=guidance, image_guidance=image_guidance, seed=seed, size=size,
                              device=device, max_new_tokens=max_new_tokens, greedy=greedy, progress=not quiet(ctx))
    generator = ActionFrameGenerator(resolve_model(model), vllm, options)

    def report(path, prompt, description, key=None):
        record = {"output": str(path), "prompt": prompt, "description": description, "seed": seed,
                  "steps": steps, "model": generator.model_name, **({"key": key} if key else {})}
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(str(path))
            if vllm:
                click.echo(f"  {description}")

    if not batch_file:
        for prompt, path in zip(prompts, paths):
            result, description = generator(frame, prompt)
            save_image(result, path)
            report(path, prompt, description)
        return
    _run_batch(generator, requests, out or ".", overwrite, report)


def _run_batch(generator, requests, out, overwrite, report):
    """Many requests, one model load; a bad request is skipped and counted, never fatal."""
    from pathlib import Path

    from lego_core.diffusion.generate import load_image, save_image
    from lego_core.errors import BadInput

    skipped, done = [], 0
    for req in requests:
        path = Path(out) / f"{req['key']}.png"
        if path.exists() and not overwrite:
            done += 1
            continue
        try:
            result, description = generator(load_image(req["image"]), req["prompt"])
        except BadInput as e:
            skipped.append((req["key"], str(e)))
            continue
        save_image(result, path)
        report(path, req["prompt"], description, key=req["key"])
    if skipped:
        click.echo(f"lego: skipped {len(skipped)} request(s); first: {skipped[0][0]}: {skipped[0][1]}", err=True)
    if done:
        click.echo(f"lego: {done} request(s) already had an image (use --overwrite to redo them)", err=True)
