"""A curate run's settings: the options, their checks, the request each sample sends, and the
record of them kept beside the output (`content_settings` decides when a rerun may resume)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lego_core.curate.prompts import PromptSet, build_messages, default_prompts, load_examples
from lego_core.errors import BadInput

BACKENDS = ("openai", "template")


@dataclass
class CurateConfig:
    inputs: list[str]
    out: str                                   # shard pattern (or folder), e.g. out/curated-%06d.tar
    backend: str = "openai"                    # "openai": any OpenAI-compatible server; "template": offline fallback
    llm: str = "gpt-3.5-turbo"                 # the paper used GPT-3.5
    base_url: str | None = None                # None: api.openai.com
    temperature: float = 0.7
    top_p: float | None = None
    max_tokens: int = 256                      # per answer
    seed: int | None = 0                       # sent to the server (best effort there) and seeds our jitter
    examples: str | None = None                # JSON file of in-context examples; None: ours
    concurrency: int = 8
    timeout: float = 60.0                      # seconds per request
    max_retries: int = 6                       # transport retries per request (429/5xx/timeouts/connection)
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    max_attempts: int = 3                      # answers per sample that fail the checks before it is rejected
    min_words: int = 8
    max_words: int = 150
    check_topic: bool = True
    max_requests: int | None = None            # stop cleanly after this many requests (every try counts)
    max_tokens_total: int | None = None        # stop cleanly once prompt + completion tokens reach this
    limit: int | None = None                   # only the first N input samples
    max_samples_per_shard: int = 1000
    rejects: str | None = None                 # default: beside the shards
    cache: str | None = None                   # default: beside the shards
    overwrite: bool = False
    fsync_cache: bool = False                  # fsync every cache line (survives power loss, not only kill -9)
    retry_rejected: bool = False               # ask again for samples whose answers all failed the checks before
    allow_insecure_http: bool = False          # send the API key over plain http to a non-loopback host


def check_config(cfg: CurateConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise BadInput(f"--backend must be one of {', '.join(BACKENDS)}, not {cfg.backend!r}")
    for name, value, low in (("--concurrency", cfg.concurrency, 1), ("--max-attempts", cfg.max_attempts, 1),
                             ("--max-tokens", cfg.max_tokens, 1),
                             ("--max-samples-per-shard", cfg.max_samples_per_shard, 1),
                             ("--max-retries", cfg.max_retries, 0), ("--min-words", cfg.min_words, 0)):
        if value < low:
            raise BadInput(f"{name} must be >= {low}, not {value}")
    if cfg.max_words < max(cfg.min_words, 1):
        raise BadInput(f"--max-words ({cfg.max_words}) must be >= --min-words ({cfg.min_words}) and >= 1")
    if cfg.timeout <= 0 or cfg.retry_base_delay < 0 or cfg.retry_max_delay < 0:
        raise BadInput("--timeout must be > 0, --retry-base-delay and --retry-max-delay >= 0")
    if not 0 <= cfg.temperature <= 2:
        raise BadInput(f"--temperature must be in [0, 2], not {cfg.temperature}")
    for name, value in (("--max-requests", cfg.max_requests), ("--max-tokens-total", cfg.max_tokens_total),
                        ("--limit", cfg.limit)):
        if value is not None and value < 0:
            raise BadInput(f"{name} must be >= 0, not {value}")


def load_prompts(cfg: CurateConfig) -> PromptSet:
    return load_examples(cfg.examples) if cfg.examples else default_prompts()


def make_request(cfg: CurateConfig, meta: dict, prompts: PromptSet) -> dict:
    """The chat.completions.create() arguments for one sample (exactly what the hash covers)."""
    req: dict[str, Any] = {
        "model": cfg.llm,
        "messages": build_messages(meta["label"], meta.get("boxes") or [], prompts),
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    }
    if cfg.top_p is not None:
        req["top_p"] = cfg.top_p
    if cfg.seed is not None:
        req["seed"] = cfg.seed
    return req


def content_settings(cfg: CurateConfig, prompts: PromptSet | None) -> dict:
    """The settings that decide what a curated sample contains; not --limit, --concurrency, the
    budgets or retries, which only change how much or how fast (see `provenance.pin_settings`)."""
    from lego_core.curate.client import public_url
    from lego_core.provenance import file_digest

    if cfg.backend == "template":
        return {"backend": "template"}
    return {"backend": cfg.backend, "llm": cfg.llm, "base_url": public_url(cfg.base_url),
            "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": cfg.seed,
            "examples": file_digest(cfg.examples) if cfg.examples else "built-in",
            "examples_count": len(prompts.examples) if prompts else 0, "min_words": cfg.min_words,
            "max_words": cfg.max_words, "check_topic": cfg.check_topic}


def config_record(cfg: CurateConfig, prompts: PromptSet | None) -> dict:
    """The resolved config saved beside the output: never the API key (it is not part of the
    config) nor credentials in the base URL."""
    from lego_core.curate.client import public_url

    d = asdict(cfg)
    d["base_url"] = public_url(cfg.base_url)
    d["examples_source"] = prompts.source if prompts else None
    d["examples_count"] = len(prompts.examples) if prompts else 0
    return d
