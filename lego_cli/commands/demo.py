"""`lego demo`: every stage on the bundled sample with tiny models."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, quiet


@click.command("demo", context_settings={"show_default": True})
@click.option("--out", default="out/demo", help="Where every artefact goes (a rerun skips finished stages).")
@click.option("--llm-base-url", help="Curate with this OpenAI-compatible server (else the offline template backend).")
@click.option("--llm", default="gpt-3.5-turbo", help="The model name on that server.")
@click.option("--train-steps", default=60, help="Diffusion training steps.")
@click.option("--tune-epochs", default=3.0, help="VLLM tuning epochs.")
@click.option("--gen-steps", default=20, help="Sampling steps when generating the held-out frames.")
@click.option("--seed", default=0)
@click.option("--json", "as_json", is_flag=True, help="Print the artefacts and timings as JSON.")
@click.pass_context
def command(ctx, out, llm_base_url, llm, train_steps, tune_epochs, gen_steps, seed, as_json):
    """Run the whole method end to end on the bundled sample: extract -> curate -> tune-vllm ->
    enrich -> train -> generate (held-out samples) -> evaluate -> report.html.

    \b
    The models are tiny and randomly initialised (nothing is downloaded), so the images show the
    pipeline working, not the paper's quality. Same functions as the subcommands; a few minutes on
    2 CPU cores; rerunning skips the stages already done.

    \b
    Examples:
      lego demo
      lego demo --out /tmp/demo --llm-base-url http://localhost:8000/v1 --llm my-model
    """
    from lego_core.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out, llm_base_url=llm_base_url, llm=llm, train_steps=train_steps,
                                 tune_epochs=tune_epochs, gen_steps=gen_steps, seed=seed, progress=not quiet(ctx)))
    if as_json:
        echo_result(result, True)
        return
    lines = ["artefacts:"] + [f"  {k}: {v}" for k, v in result["artefacts"].items()]
    lines += ["", result["table"], "", f"report: {result['report']}"]
    echo_result("\n".join(lines))
