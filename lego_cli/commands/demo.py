"""`lego demo`: every stage on a synthetic kitchen, with tiny models that learn it."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, quiet


@click.command("demo", context_settings={"show_default": True})
@click.option("--out", default="out/demo", help="Where every artefact goes (a rerun skips finished stages).")
@click.option("--llm-base-url", help="Curate with this OpenAI-compatible server (else the offline template backend).")
@click.option("--llm", default="gpt-3.5-turbo", help="The model name on that server.")
@click.option("--train-steps", default=700, help="Diffusion training steps (each model).")
@click.option("--tune-epochs", default=16.0, help="VLLM tuning epochs.")
@click.option("--vae-steps", default=400, help="Steps fitting the tiny VAE to the world's frames.")
@click.option("--clips", default=112, help="Clips (one layout each, 3 actions) in the synthetic world.")
@click.option("--test-clips", default=12, help="Clips held out for evaluation.")
@click.option("--ablation", default="label", help="Conditionings trained beside description+joint, comma-separated "
              "('' for none): label, description, description+image, description+text.")
@click.option("--gen-steps", default=20, help="Sampling steps when generating the held-out frames.")
@click.option("--seed", default=0)
@click.option("--json", "as_json", is_flag=True, help="Print the artefacts and timings as JSON.")
@click.pass_context
def command(ctx, out, llm_base_url, llm, train_steps, tune_epochs, vae_steps, clips, test_clips, ablation, gen_steps,
            seed, as_json):
    """Run the whole method end to end on a synthetic kitchen with tiny models that learn it:
    world -> extract -> curate -> tune-vllm -> enrich -> train -> generate (held-out clips) ->
    evaluate -> report.html.

    \b
    The world is made so that only the action decides the change (the acting hand and the object's
    end state), and the models are sized to learn it on 2 CPU cores in minutes. The report shows,
    on clips no model saw: generated vs input frame and true vs wrong actions (PSNR over the pixels
    the action changed), the label-only ablation, and whether the tuned VLLM's descriptions name
    the verb, the object and where it is. Same functions as the subcommands; rerunning skips the
    stages already done. Exit code 0 either way; the report says which checks passed.

    \b
    Examples:
      lego demo
      lego demo --out /tmp/demo --llm-base-url http://localhost:8000/v1 --llm my-model
    """
    from lego_core.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(
        out=out, llm_base_url=llm_base_url, llm=llm, train_steps=train_steps, tune_epochs=tune_epochs,
        vae_steps=vae_steps, clips=clips, test_clips=test_clips, gen_steps=gen_steps, seed=seed,
        ablation=tuple(a.strip() for a in ablation.split(",") if a.strip()), progress=not quiet(ctx)))
    if as_json:
        echo_result(result, True)
        return
    lines = ["artefacts:"] + [f"  {k}: {v}" for k, v in result["artefacts"].items()]
    lines += ["", result["table"], "", f"every check passed: {'yes' if result['passed'] else 'NO'}",
              f"report: {result['report']}"]
    echo_result("\n".join(lines))
