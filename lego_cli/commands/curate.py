"""`lego curate`: detailed action descriptions (curated.txt) from any OpenAI-compatible LLM."""

from __future__ import annotations

import click

from lego_cli.common import echo_result, quiet


@click.command("curate", context_settings={"show_default": True})
@click.argument("shards", nargs=-1)
@click.option("--out",
              help="Output shard pattern (or folder), e.g. data/curated-%06d.tar. The cache and rejects go beside it.")
@click.option("--backend", type=click.Choice(["openai", "template"]), default="openai",
              help="'openai': an OpenAI-compatible LLM (the paper's method). 'template': offline fallback that "
                   "restates the label and boxes without an LLM; NOT the paper's method.")
@click.option("--llm", default="gpt-3.5-turbo", help="Model name on the server (the paper used GPT-3.5).")
@click.option("--base-url", envvar="OPENAI_BASE_URL", show_envvar=True,
              help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 "
                   "(Ollama), http://localhost:8080/v1 (llama.cpp). Default: api.openai.com. "
                   "The API key is read from OPENAI_API_KEY only.")
@click.option("--temperature", default=0.7, type=float, help="Sampling temperature.")
@click.option("--top-p", type=float, help="Nucleus sampling (not sent unless given).")
@click.option("--max-tokens", default=256, help="Most tokens per answer.")
@click.option("--seed", default=0, type=int,
              help="Sent to the server (reproducible where supported); seeds the retry jitter.")
@click.option("--examples", type=click.Path(dir_okay=False),
              help="JSON file of your own in-context examples (see --show-examples for the format).")
@click.option("--show-examples", is_flag=True,
              help="Print the built-in system instruction and examples in the --examples format, then exit.")
@click.option("--concurrency", default=8, help="Requests in flight at once.")
@click.option("--timeout", default=60.0, help="Seconds per request before it is retried.")
@click.option("--max-retries", default=6,
              help="Retries per request on 429 / 5xx / timeouts / connection errors / malformed responses.")
@click.option("--retry-base-delay", default=1.0,
              help="Backoff: base * 2^retry seconds (with jitter), unless the server sends Retry-After.")
@click.option("--retry-max-delay", default=60.0, help="Longest backoff between retries.")
@click.option("--max-attempts", default=3, help="Answers asked per sample while they fail the checks (empty, refusal, "
                                                "too short/long, not about the action); then the sample is rejected.")
@click.option("--min-words", default=8, help="Shortest accepted answer.")
@click.option("--max-words", default=150, help="Longest accepted answer.")
@click.option("--max-requests", type=int,
              help="Stop cleanly after this many requests (every try counts); rerun to continue.")
@click.option("--max-tokens-total", type=int,
              help="Stop cleanly once prompt + completion tokens reach this (requests in flight finish).")
@click.option("--limit", type=int, help="Only the first N input samples.")
@click.option("--max-samples-per-shard", default=1000, help="Start a new output shard after this many samples.")
@click.option("--cache", "cache_file", type=click.Path(dir_okay=False),
              help="Answer cache JSONL (default: beside the output shards).")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="JSONL of rejected samples with reasons (default: beside the output shards).")
@click.option("--retry-rejected", is_flag=True,
              help="Ask again for samples whose answers all failed the checks in an earlier run "
                   "(remembered in the cache).")
@click.option("--allow-insecure-http", is_flag=True,
              help="Send OPENAI_API_KEY over plain http to a non-loopback --base-url (refused otherwise).")
@click.option("--dry-run", is_flag=True,
              help="Print the prompts that would be sent (and whether each is cached); send and write nothing.")
@click.option("--overwrite", is_flag=True,
              help="Rewrite the output shards from scratch (the answer cache is kept: nothing is paid twice).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary (or with --dry-run, one request per line) as JSON.")
@click.pass_context
def command(ctx, shards, out, backend, llm, base_url, temperature, top_p, max_tokens, seed, examples, show_examples,
            concurrency, timeout, max_retries, retry_base_delay, retry_max_delay, max_attempts, min_words, max_words,
            max_requests, max_tokens_total, limit, max_samples_per_shard, cache_file, rejects, retry_rejected,
            allow_insecure_http, dry_run, overwrite, as_json):
    """Write a detailed description of each action (curated.txt) with an LLM, from the short label
    and the hand/object boxes, prompted with hand-written in-context examples (the paper's scheme).

    \b
    SHARDS: brace patterns, globs, files or folders of .tar shards (from `lego extract`).
    Output: new shards with curated.txt added, every other file unchanged. Each accepted answer is
    appended to a cache beside them first, so a rerun (after a crash, a kill or --max-requests)
    asks only for the answers still missing and never pays twice.
    The API key comes from OPENAI_API_KEY and is never printed, logged or written.

    \b
    Examples:
      export OPENAI_API_KEY=...
      lego curate data/epic-{000000..000009}.tar --out data/curated-%06d.tar --concurrency 16
      lego curate data/ --out cur/ --base-url http://localhost:8000/v1 --llm meta-llama/Llama-3.1-8B-Instruct
      lego curate shards/ --out cur/ --dry-run --limit 2        # see the prompts, send nothing
      lego curate shards/ --out demo/ --backend template        # offline fallback, not the paper's method
    """
    import sys

    from lego_core.curate.run import CurateConfig, curate, dry_run as run_dry
    from lego_core.errors import BadInput

    if show_examples:
        from lego_core.curate.prompts import default_prompts, examples_as_json, load_examples

        click.echo(examples_as_json(load_examples(examples) if examples else default_prompts()))
        return
    if not shards:
        raise BadInput("no shards given: pass shard files, a brace pattern, a glob or a folder (see --help)")
    if not out and not dry_run:
        raise BadInput("--out PATTERN is required (e.g. --out data/curated-%06d.tar)")
    cfg = CurateConfig(
        inputs=list(shards), out=out or "", backend=backend, llm=llm, base_url=base_url, temperature=temperature,
        top_p=top_p, max_tokens=max_tokens, seed=seed, examples=examples, concurrency=concurrency, timeout=timeout,
        max_retries=max_retries, retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
        max_attempts=max_attempts, min_words=min_words, max_words=max_words, max_requests=max_requests,
        max_tokens_total=max_tokens_total, limit=limit, max_samples_per_shard=max_samples_per_shard,
        rejects=rejects, cache=cache_file, overwrite=overwrite, retry_rejected=retry_rejected,
        allow_insecure_http=allow_insecure_http,
    )
    if dry_run:
        report = run_dry(cfg, sys.stdout, as_json=as_json)
        click.echo(f"lego: dry run: {report['samples']} samples, would send {report['would_send']} requests "
                   f"({report['cached']} answers cached"
                   + (f", {report['kept']} samples keep the description they have" if report["kept"] else "")
                   + "); nothing sent", err=True)
        return
    summary = curate(cfg, progress=not quiet(ctx))
    echo_result(summary.to_dict() if as_json else "\n".join(summary.lines()), as_json)
    if summary.stopped:
        click.echo(f"lego: stopped early ({summary.stopped}); rerun the same command to continue", err=True)
