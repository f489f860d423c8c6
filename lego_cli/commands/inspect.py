"""`lego inspect`: what a shard set holds and whether it is valid."""

from __future__ import annotations

import click

from lego_cli.common import echo_result


@click.command("inspect")
@click.argument("shards", nargs=-1, required=True)
@click.option("--full", is_flag=True, help="Decode every image (slower) instead of checking JPEG markers.")
@click.option("--no-validate", is_flag=True, help="Only count and list; skip the schema checks.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when any sample fails validation or any shard is truncated or corrupt.")
@click.option("--max-member-mb", type=click.FloatRange(min=0, min_open=True), default=64, show_default=True,
              help="Leave unread (and report) any file in a shard larger than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(shards, full, no_validate, strict, max_member_mb, as_json):
    """Count samples and shards, list the fields present, validate against the schema, and show
    the first sample's meta. The first thing to run on a shard set.

    \b
    SHARDS: brace patterns, globs, files or folders of .tar shards.

    \b
    Examples:
      lego inspect shards/
      lego inspect 'data/epic-{000000..000009}.tar' --json | jq .fields
    """
    from lego_core.data.inspect import format_inspection, inspect_shards
    from lego_core.errors import LegoError

    report = inspect_shards(list(shards), validate=not no_validate, full=full, max_member_mb=max_member_mb)
    echo_result(report if as_json else format_inspection(report), as_json)
    if strict and report["corrupt_shards"]:
        first = report["corrupt_shards"][0]
        raise LegoError(f"{len(report['corrupt_shards'])} of {report['shards']} shards are truncated or corrupt "
                        f"(first: {first['shard']}: {first['error']})")
    if strict and report["validated"] and report["valid"] != report["samples"]:
        raise LegoError(f"{report['samples'] - report['valid']} of {report['samples']} samples failed validation")
