"""`lego serve`: a page to try the model in a browser."""

from __future__ import annotations

import click

from lego_cli.common import generation_options, quiet


@click.command("serve", context_settings={"show_default": True})
@click.option("--model", envvar="LEGO_MODEL", show_envvar=True,
              help="LEGO diffusion model folder.  [default: the model `lego demo` trained in --demo-dir]")
@click.option("--vllm", help="LLaVA folder: describe each action first (shown under its image).  [default: the "
                             "demo's VLLM when the demo's model is served]")
@click.option("--demo-dir", default="out/demo", help="Where `lego demo` wrote its run (used without --model).")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every network, your choice).")
@click.option("--port", default=7860, help="Port to listen on.")
@click.option("--samples", "sample_shards", help="Also offer the first input frames of this shard set.")
@click.option("--work-dir", default="out/serve", help="Where uploads are kept (the page's commands name them).")
@generation_options()
@click.pass_context
def command(ctx, model, vllm, demo_dir, host, port, sample_shards, work_dir, generate_options):
    """Serve a page to try the model: a frame and actions in, action frames and descriptions out.

    \b
    Upload a frame (or pick a sample), write actions one per line, and get one column of images
    per action, each with the VLLM's description (with --vllm) and the `lego generate` command
    that makes it again. The generation options set the page's starting values; the models load
    once and requests queue. Needs the extra: pip install 'lego[serve]'.

    \b
    Examples:
      lego serve --model runs/lego/model --vllm runs/llava/model
      lego serve                      # the model `lego demo` trained in out/demo
      lego serve --host 0.0.0.0 --port 8080 --samples 'shards/test-{000000..000003}.tar'
    """
    from pathlib import Path

    from lego_core.diffusion.generate import GenerateOptions
    from lego_core.serve.app import import_gradio, serve
    from lego_core.serve.session import ServeSession, find_models, shard_samples

    import_gradio()                                  # no gradio: say how to get it before loading anything
    models = find_models(model, vllm, demo_dir)
    extra = shard_samples(sample_shards, Path(work_dir) / "samples") if sample_shards else ()
    session = ServeSession(models, GenerateOptions(**generate_options, progress=True), work_dir)
    if not quiet(ctx):
        click.echo(f"lego: serving {models.model}" + (f" with {models.vllm}" if models.vllm else "")
                   + f" on http://{host}:{port} (Ctrl+C stops)", err=True)
    serve(session, host, port, extra_samples=extra, quiet=quiet(ctx))
