"""The curate stage: shards in -> new shards with ``curated.txt`` added, every other file unchanged.

For each sample (in input order) the in-context request is built from ``meta.json`` (label and
boxes). An answer already in the cache (same sample key, same request hash) is used as is;
otherwise up to ``concurrency`` requests run at once. An answer is checked (`checks`), appended to
the cache and only then written to the output shard, in input order (a window of finished samples
waits for a slow one ahead of it). An answer that fails the checks is asked for again, up to
``max_attempts`` times, then the sample goes to the rejects file with the reason; so does a sample
whose input is invalid. A sample that already has a ``curated.txt`` (a description given to
`lego extract` with your own data) keeps it: nothing is asked for it. A rerun with
the same ``--out`` skips the samples already in finished shards and asks only for
answers not in the cache; ``--overwrite`` rewrites the shards but keeps the cache (it
never pays twice; delete the cache file to ask again).

The settings (`CurateConfig`) and the request each sample sends live in `curate.config`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

from lego_core.curate import checks as checks_mod
from lego_core.curate.cache import AnswerCache, request_hash, valid_entry
from lego_core.curate.config import (CurateConfig, check_config, config_record, content_settings, load_prompts,
                                     make_request)
from lego_core.curate.prompts import format_messages
from lego_core.data import schema
from lego_core.data.schema import CURATED, META
from lego_core.data.shards import sidecar, skipped_lines
from lego_core.errors import BadInput, LegoError

log = logging.getLogger("lego.curate")


@dataclass
class CurateSummary:
    written: int = 0
    from_cache: int = 0
    kept: int = 0                      # samples that came with a description and kept it
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    remaining: int = 0
    stopped: str | None = None
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    responses_without_usage: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rejects_file: str | None = None
    cache_file: str | None = None
    backend: str = "openai"
    model: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = dict(self.skipped)
        d["skipped_total"] = sum(self.skipped.values())
        d["total_tokens"] = self.prompt_tokens + self.completion_tokens
        return d

    def lines(self) -> list[str]:
        out = [f"samples curated: {self.written} in {self.seconds:.1f}s"
               + (f" ({self.from_cache} from the cache)" if self.from_cache else "")
               + (f"; another {self.already_done} were already done" if self.already_done else "")]
        if self.kept:
            out.append(f"kept {self.kept} description{'s' if self.kept != 1 else ''} the samples already had")
        if self.backend == "openai":
            out.append(f"requests: {self.requests} ({self.retries} retries); tokens: {self.prompt_tokens} prompt + "
                       f"{self.completion_tokens} completion = {self.prompt_tokens + self.completion_tokens}"
                       + (f" ({self.responses_without_usage} responses did not report usage)"
                          if self.responses_without_usage else ""))
        if self.stopped:
            out.append(f"stopped early: {self.stopped}; {self.remaining} samples left, rerun "
                       "the same command to continue")
        out.extend(skipped_lines(self.skipped, self.rejects_file))
        if self.cache_file:
            out.append(f"cache: {self.cache_file}")
        out.extend(f"shard: {s}" for s in self.shards)
        return out


# --- pieces -----------------------------------------------------------------------------------


class Rejects:
    """Counts skipped samples per reason and writes each to the rejects JSONL (flushed).
    Duck-types `SkipStats.add` so `iter_samples` can report invalid input samples here."""

    def __init__(self, f: TextIO | None, summary: CurateSummary):
        self.f, self.summary = f, summary

    def add(self, reason: str, key: str | None = None, url: str | None = None, detail: Any = None) -> None:
        from lego_core.curate.client import redact

        self.summary.skipped[reason] += 1
        if self.f is not None:
            if isinstance(detail, str):
                detail = redact(detail)
            elif detail is not None:
                detail = json.loads(redact(json.dumps(detail, ensure_ascii=False, default=str)))
            rec = {"key": key, "url": url, "reason": reason, "detail": detail}
            self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.f.flush()
        log.debug("skipped %s: %s", key, reason)


def _samples(cfg: CurateConfig, urls: list[str], rejects: Rejects) -> Iterator[dict]:
    from lego_core.data.shards import iter_samples

    for i, sample in enumerate(iter_samples(urls, stats=rejects)):
        if cfg.limit is not None and i >= cfg.limit:
            return
        yield sample


@dataclass
class _Result:
    kind: str                 # "ok" | "cached" | "kept" | "rejected" | "stopped"
    text: str = ""
    reason: str = ""
    detail: Any = None


# --- the stage --------------------------------------------------------------------------------


def dry_run(cfg: CurateConfig, out: TextIO = sys.stdout, *, as_json: bool = False) -> dict:
    """Print every request that would be sent (nothing is sent, nothing is written)."""
    from lego_core.data.shards import expand_shards

    check_config(cfg)
    prompts = load_prompts(cfg)
    urls = expand_shards(cfg.inputs)
    summary = CurateSummary(backend=cfg.backend, model=cfg.llm)
    cached = _read_only_cache(cfg)
    n = would_send = 0
    kept = 0
    for sample in _samples(cfg, urls, Rejects(None, summary)):
        meta = json.loads(sample[META])
        key = sample["__key__"]
        if CURATED in sample:
            kept += 1
            continue
        if cfg.backend == "template":
            from lego_core.curate.template import describe

            text = describe(meta["label"], meta.get("noun", ""), meta.get("boxes") or [])
            out.write(json.dumps({"key": key, "curated": text}, ensure_ascii=False) + "\n" if as_json
                      else f"=== {key}\n{text}\n\n")
            n += 1
            continue
        req = make_request(cfg, meta, prompts)
        h = request_hash(req)
        hit = (key, h) in cached
        would_send += not hit
        if as_json:
            out.write(json.dumps({"key": key, "request_hash": h, "cached": hit, "request": req}, ensure_ascii=False)
                      + "\n")
        else:
            out.write(f"=== {key}  (request {h[:12]}{', cached' if hit else ''})\n{format_messages(req['messages'])}\n")
        n += 1
    return {"samples": n, "would_send": would_send, "cached": n - would_send if cfg.backend == "openai" else 0,
            "kept": kept, "skipped": dict(summary.skipped)}


def _read_only_cache(cfg: CurateConfig) -> set[tuple[str, str]]:
    from lego_core.data.shards import shard_pattern

    path = cfg.cache or sidecar(shard_pattern(cfg.out), "curate-cache.jsonl") if cfg.out else cfg.cache
    found: set[tuple[str, str]] = set()
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if valid_entry(e):          # what AnswerCache would use: an invalid line is a miss
                    found.add((e["key"], e["request"]))
    return found


def curate(cfg: CurateConfig, *, progress: bool = True, environ: dict | None = None) -> CurateSummary:
    """Run the stage; resumable. Raises `BadInput` / `LegoError` for what ends a run."""
    from tqdm import tqdm

    from lego_core.data import shards
    from lego_core.curate.client import Budget, RetryPolicy, resolve_api_key
    from lego_core.provenance import pin_settings

    started = time.perf_counter()
    check_config(cfg)
    prompts = load_prompts(cfg) if cfg.backend == "openai" else None
    urls = shards.expand_shards(cfg.inputs)
    api_key = resolve_api_key(cfg.base_url, os.environ if environ is None else environ,
                              allow_insecure_http=cfg.allow_insecure_http) if cfg.backend == "openai" else None

    pattern = shards.shard_pattern(cfg.out)
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    own = {os.path.realpath(p) for p in shards.finished_shards(pattern)}
    if any(os.path.realpath(u) in own for u in urls):
        raise BadInput(f"--out {cfg.out} names the input shards: write curated shards under another name")
    pin_settings(sidecar(pattern, "curate.json"), content_settings(cfg, prompts), out=cfg.out,
                 overwrite=cfg.overwrite, has_output=bool(own), extra=config_record(cfg, prompts))
    done, start_index = shards.prepare_output(pattern, overwrite=cfg.overwrite)
    n_inputs = len(shards.read_keys(urls))
    total = min(n_inputs, cfg.limit) if cfg.limit is not None else n_inputs

    summary = CurateSummary(backend=cfg.backend, model=cfg.llm if cfg.backend == "openai" else None)
    summary.rejects_file = cfg.rejects or sidecar(pattern, "curate-rejects.jsonl")
    summary.cache_file = (cfg.cache or sidecar(pattern, "curate-cache.jsonl")) if cfg.backend == "openai" else None

    budget = Budget(cfg.max_requests, cfg.max_tokens_total)
    policy = RetryPolicy(cfg.max_retries, cfg.retry_base_delay, cfg.retry_max_delay)
    check_cfg = checks_mod.CheckConfig(cfg.min_words, cfg.max_words, cfg.check_topic)
    cache = AnswerCache(summary.cache_file, fsync=cfg.fsync_cache) if summary.cache_file else None
    try:
        with open(summary.rejects_file, "w", encoding="utf-8") as rejects_out, \
                shards.ShardWriter(pattern, max_samples=cfg.max_samples_per_shard, start_index=start_index) as writer, \
                tqdm(total=max(total - len(done), 0), unit="sample", desc="curate", disable=not progress,
                     dynamic_ncols=True, file=sys.stderr) as bar:
            rejects = Rejects(rejects_out, summary)
            samples = _samples(cfg, urls, rejects)

            def emit(sample: dict, res: _Result) -> None:
                if res.kind in ("ok", "cached", "kept"):
                    out = {k: v for k, v in sample.items() if not k.startswith("_")}
                    out["__key__"] = sample["__key__"]
                    out[CURATED] = res.text.encode("utf-8")
                    writer.write(out)
                    summary.written += 1
                    summary.from_cache += res.kind == "cached"
                    summary.kept += res.kind == "kept"
                elif res.kind == "rejected":
                    rejects.add(res.reason, sample["__key__"], sample.get("__url__"), res.detail)
                if res.kind != "stopped":
                    bar.update(1)
                    if cfg.backend == "openai":
                        bar.set_postfix(req=budget.usage.requests, tok=budget.usage.total_tokens, refresh=False)

            if cfg.backend == "template":
                _run_template(samples, done, summary, emit)
            else:
                asyncio.run(_run_llm(cfg, samples, done, summary, emit, prompts, cache, budget, policy, check_cfg,
                                     api_key))
    finally:
        if cache is not None:
            cache.close()
    u = budget.usage
    summary.requests, summary.retries = u.requests, u.retries
    summary.prompt_tokens, summary.completion_tokens = u.prompt_tokens, u.completion_tokens
    summary.responses_without_usage = u.responses_without_usage
    summary.stopped = budget.stopped
    summary.remaining = max(total - summary.written - summary.already_done - sum(summary.skipped.values()), 0)
    summary.shards = [str(p) for p in shards.finished_shards(pattern)]
    summary.seconds = time.perf_counter() - started
    if isinstance(budget.fatal, BadInput):
        # the configuration is wrong (e.g. the server refuses every request): the samples it
        # rejected on the way are not the samples' fault, and exit 2 is one line
        raise budget.fatal
    if summary.skipped:
        log.warning("skipped %d samples (%s); see %s", sum(summary.skipped.values()),
                    ", ".join(f"{r}: {n}" for r, n in summary.skipped.most_common()), summary.rejects_file)
    if budget.fatal is not None:
        raise budget.fatal
    return summary


def _kept(sample: dict) -> asyncio.Future:
    """A finished result for a sample that came with its description (kept in input order)."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(_Result("kept", schema.decode_text(sample[CURATED])))
    return fut


def _run_template(samples, done, summary, emit) -> None:
    from lego_core.curate.template import describe

    for sample in samples:
        if sample["__key__"] in done:
            summary.already_done += 1
            continue
        if CURATED in sample:
            emit(sample, _Result("kept", schema.decode_text(sample[CURATED])))
            continue
        meta = json.loads(sample[META])
        emit(sample, _Result("ok", describe(meta["label"], meta.get("noun", ""), meta.get("boxes") or [])))


async def _run_llm(cfg, samples, done, summary, emit, prompts, cache, budget, policy, check_cfg, api_key) -> None:
    from lego_core.curate.client import LLMClient, SampleFailed, Stopped, redact

    client = LLMClient(api_key=api_key, base_url=cfg.base_url, timeout=cfg.timeout, concurrency=cfg.concurrency,
                       policy=policy, budget=budget, seed=cfg.seed)

    async def one(key: str, meta: dict) -> _Result:
        req = make_request(cfg, meta, prompts)
        h = request_hash(req)
        hit = cache.get(key, h)
        if hit is not None:
            return _Result("cached", hit["text"])
        gone = None if cfg.retry_rejected else cache.rejection(key, h)
        if gone is not None:    # paid for already: every answer failed the checks
            return _Result("rejected", reason=gone["rejected"], detail=gone.get("detail"))
        async with client.slots:
            last = ("", None)
            try:
                for attempt in range(cfg.max_attempts):
                    c = await client.complete(req, what=key)
                    text, reason = checks_mod.check_response(c.text, meta["label"], check_cfg,
                                                             finish_reason=c.finish_reason, refusal=c.refusal)
                    if reason is None:
                        cache.add(key, h, text, model=cfg.llm, usage=c.usage)   # before anything else
                        return _Result("ok", text)
                    last = (reason, text[:300])
                    log.debug("%s: answer %d rejected (%s)", key, attempt + 1, reason)
            except Stopped:
                return _Result("stopped")
            except SampleFailed as e:
                return _Result("rejected", reason=e.reason, detail=e.detail)
            except LegoError as e:
                budget.stop(redact(e), fatal=type(e)(redact(e)))
                return _Result("stopped")
            reason = f"answer failed the checks: {last[0]}"
            detail = {"attempts": cfg.max_attempts, "last_answer": last[1]}
            cache.add_rejection(key, h, reason, detail)
            return _Result("rejected", reason=reason, detail=detail)

    window: deque[tuple[dict, asyncio.Future]] = deque()
    max_window = max(4 * cfg.concurrency, 16)

    async def flush(limit: int) -> None:
        while window and (len(window) > limit or window[0][1].done()):
            sample, fut = window.popleft()
            emit(sample, await fut)

    try:
        for sample in samples:
            key = sample["__key__"]
            if key in done:
                summary.already_done += 1
                continue
            if budget.stopped is not None:
                break
            if CURATED in sample:
                window.append((sample, _kept(sample)))
                await flush(max_window)
                continue
            meta = json.loads(sample[META])
            window.append((sample, asyncio.ensure_future(one(key, meta))))
            await asyncio.sleep(0)          # let cached answers and finished requests complete
            await flush(max_window)
        await flush(0)
        # a run of fewer than REFUSED_UNTIL_FATAL requests, all refused: the same verdict as for
        # the first REFUSED_UNTIL_FATAL of a longer one (exit 2, not "0 curated" with exit 0)
        refused = client.refused_everything()
        if refused is not None:
            budget.stop(str(refused), fatal=refused)
    finally:
        for _, fut in window:
            fut.cancel()
        await client.close()


