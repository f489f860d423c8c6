"""Small helpers every subcommand shares (kept free of heavy imports)."""

from __future__ import annotations

import json

import click


def quiet(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("quiet"))


def echo_result(result, as_json: bool = False) -> None:
    """Results go to stdout: JSON when asked, text otherwise."""
    click.echo(json.dumps(result, indent=None, default=str) if as_json else result)
