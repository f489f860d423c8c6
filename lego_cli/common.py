"""Small helpers every subcommand shares (kept free of heavy imports)."""

from __future__ import annotations

import json

import click


def quiet(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("quiet"))


def echo_result(result, as_json: bool = False) -> None:
    """Results go to stdout: JSON when asked, text otherwise."""
    click.echo(json.dumps(result, indent=None, default=str) if as_json else result)


# The generation options, declared once for every command that generates (generate, evaluate's
# generate-first mode, serve): name -> click option. Each becomes a `GenerateOptions` field.
_GENERATION = {
    "steps": click.option("--steps", type=int, help="Denoising steps (Euler ancestral).  [default: the step count "
                                                    "the model's validation used (lego.json), else 100]"),
    "guidance": click.option("--guidance", default=7.5, show_default=True, help="Text guidance scale s_T."),
    "image_guidance": click.option("--image-guidance", default=1.5, show_default=True,
                                   help="Image guidance scale s_I."),
    "seed": click.option("--seed", default=0, show_default=True,
                         help="Random seed: same inputs and seed, same image (image i of N: seed + i)."),
    "size": click.option("--size", type=int, help="The model's working resolution (square).  [default: the "
                                                  "resolution it was trained at (lego.json), else 256]"),
    "device": click.option("--device", default="auto", show_default=True,
                           help="cpu, cuda, cuda:1 ... (auto: cuda when available)."),
    "num_images": click.option("--num-images", default=1, show_default=True,
                               help="Images per action (seeds seed … seed+N-1), named NAME-{i}.png when N > 1."),
    "batch_size": click.option("--batch-size", default=8, show_default=True,
                               help="Images denoised at once (the UNet runs three guidance branches for each), "
                                    "and descriptions per VLLM call."),
    "dtype": click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
                          show_default=True, help="Diffusion model precision (auto: fp16 on a GPU, fp32 on the CPU)."),
    "offload": click.option("--offload", type=click.Choice(["model", "sequential"]),
                            help="GPU only: keep weights in CPU memory and move each part (model) or layer "
                                 "(sequential, least memory, slowest) to the GPU when used."),
    "greedy": click.option("--greedy", is_flag=True,
                           help="Greedy VLLM decoding (else sampling at temperature 0.2, seeded); batched "
                                "descriptions then equal one-at-a-time ones."),
    "max_new_tokens": click.option("--max-new-tokens", default=1024, show_default=True,
                                   help="Longest VLLM description, in tokens."),
    "vllm_dtype": click.option("--vllm-dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
                               show_default=True, help="VLLM precision (auto: fp16 on a GPU, fp32 on the CPU)."),
    "vllm_quantize": click.option("--vllm-quantize", type=click.Choice(["4bit", "8bit"]),
                                  help="GPU only: load the VLLM's weights in 4 or 8 bits (bitsandbytes)."),
    "question": click.option("--question", metavar="TEMPLATE",
                             help="What the VLLM is asked, {} where the action goes.  [default: the authors' "
                                  "\"How does the person properly {} that is displayed in the video frame?\"]"),
    "authors_postprocess": click.option("--authors-postprocess", is_flag=True,
                                        help="Post-process as the authors did before scoring (each image stretched "
                                             "to its min..max, uint8, JPEG quality 75): writes .jpg files."),
}


def question_option(fn):
    """`--question`, for a command that asks the VLLM without generating images (enrich)."""
    return _GENERATION["question"](fn)


def generation_options(*, skip: tuple[str, ...] = ()):
    """Add the generation options to a command; it receives them as one dict, `generate_options`
    (GenerateOptions fields). `skip`: those the command declares itself (evaluate's --seed, --device
    and --batch-size mean more there)."""
    import functools

    names = [n for n in _GENERATION if n not in skip]

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, generate_options={n: kwargs.pop(n) for n in names}, **kwargs)

        for name in reversed(names):
            wrapper = _GENERATION[name](wrapper)
        return wrapper

    return decorate


def engine_options(*, micro_batch: tuple[int, str], grad_accum: tuple[int, str], zero_stage: int,
                   offload_params: bool = False):
    """The DeepSpeed options `lego train` and `lego tune-vllm` share, declared once; the command
    receives them as one `engine` argument (an `EngineOptions`). The defaults that differ per model
    are given as (default, help)."""
    import functools

    options = [
        click.option("--batch-size", "micro_batch", default=micro_batch[0], help=micro_batch[1]),
        click.option("--grad-accum", default=grad_accum[0], help=grad_accum[1]),
        click.option("--zero", "zero_stage", default=zero_stage, type=click.IntRange(0, 3),
                     help="DeepSpeed ZeRO stage."),
        click.option("--precision", default="auto", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                     help="auto: bf16 on GPUs that support it, else fp32."),
        click.option("--grad-clip", default=1.0),
        click.option("--offload-optimizer", is_flag=True, help="Keep ZeRO optimizer states in CPU memory."),
    ]
    if offload_params:
        options.append(click.option("--offload-params", is_flag=True,
                                    help="ZeRO-3: keep parameters in CPU memory too (the authors' zero3_offload)."))
    options.append(click.option("--deepspeed", "deepspeed_config", type=click.Path(dir_okay=False, exists=True),
                                help="Your own DeepSpeed JSON (overrides the flags above)."))
    names = ["micro_batch", "grad_accum", "zero_stage", "precision", "grad_clip", "offload_optimizer",
             *(["offload_params"] if offload_params else []), "deepspeed_config"]

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from lego_core.engine.config import EngineOptions

            return fn(*args, engine=EngineOptions(**{n: kwargs.pop(n) for n in names}), **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
