"""The `lego` command: a click group whose subcommands are imported only when they run.

Each subcommand lives in its own module under lego_cli/commands and is listed in COMMANDS with a
one-line summary, so `lego --help` never imports a stage (or torch) just to print its name.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from lego_core import __version__

# name -> (module under lego_cli.commands, one-line summary shown by `lego --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("extract", "Video + action annotations -> (input frame, action frame) pairs in shards."),
    "enrich": ("enrich", "Run the VLLM over every sample: add its description and embeddings (R, H_i, H_t)."),
    "inspect": ("inspect", "Count, list and validate the samples of a shard set."),
    "evaluate": ("evaluate",
                 "Score generated frames (PSNR, LPIPS, FID, CLIP, BLIP): table, metrics.json, report.html."),
    "curate": ("curate", "Detailed action descriptions (curated.txt) from any OpenAI-compatible LLM; resumable."),
    "demo": ("demo", "The whole method end to end on a synthetic kitchen, with tiny models that learn it."),
    "tune-vllm": ("tune_vllm", "Visual instruction tuning of a LLaVA on curated shards (DeepSpeed)."),
    "train": ("train", "Train the LEGO diffusion model (DeepSpeed; one CPU to many GPUs)."),
    "generate": ("generate", "A frame + an action prompt -> the action frame (and the description)."),
    "serve": ("serve", "Try a model in the browser: a frame and actions in, action frames and descriptions out."),
    "import": ("import_cmd", "The authors' released checkpoint, VLLM and dataset -> lego's model folders and shards."),
}


PIPELINE_ORDER = ("extract", "inspect", "curate", "tune-vllm", "enrich", "train", "generate", "evaluate", "demo",
                  "serve", "import")


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in PIPELINE_ORDER if name in COMMANDS] + sorted(set(COMMANDS) - set(PIPELINE_ORDER))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"lego_cli.commands.{COMMANDS[name][0]}")
        return module.command

    def invoke(self, ctx: click.Context):
        """Turn failures into one line on stderr and an exit code (2: bad input, 1: runtime)."""
        from lego_core.errors import LegoError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except LegoError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"lego: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("lego: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # `lego ... | head` closed the pipe: stop quietly, as other Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:  # noqa: BLE001 - the one place a crash becomes one line
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"lego: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
            ctx.exit(1)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lego")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs; results and errors only.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """LEGO: egocentric action frame generation, every stage of the method in one tool.

    \b
    The pipeline, one command per stage (each reads and writes WebDataset shards):
      lego extract -> curate -> tune-vllm -> enrich -> train -> generate -> evaluate
    New here? `lego demo` runs all of them on a bundled sample with tiny models.
    Run `lego COMMAND --help` for a command's options and an example.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="lego: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="lego")


if __name__ == "__main__":
    main()
