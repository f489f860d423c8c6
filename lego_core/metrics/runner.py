"""The evaluation runner: one or several generated sets against one reference, every metric batched.

    evaluate({"ours": "gen/"}, "shards/", EvalConfig(), out="eval/")      # --generated/--reference

Generating first (`lego evaluate SHARDS --model DIR`) is `lego_core.evaluation.evaluate_models`.

Each set: match keys (`matching`), then stream the intersection in batches — images decoded in a
thread pool one batch ahead, the generated image resized to its reference's size — through each
metric's `update`; set-level metrics (FID) at the end. A sample whose image does not decode is
skipped, counted and reported, never fatal. Models are loaded once for all sets, and reference-side
work (CLIP reference embeddings, description embeddings, FID reference statistics) is done once
when the sets share their keys, so the ablation table costs little more than its generated images.
"""

from __future__ import annotations

import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from lego_core.errors import BadInput

from . import ALL_METRICS, DEFAULT_METRICS, METRIC_ALIASES
from .blip_score import DEFAULT_BLIP, PROMPT
from .clip_score import DEFAULT_CLIP
from .common import Batch, Metric, decode_image, resize_to
from .matching import Source, match, open_source
from .selection import build_metrics, check_descriptions, check_egovlp, check_input_frames

log = logging.getLogger(__name__)

PREFERRED_REPORT_METRIC = ("lpips", "clip", "psnr")


@dataclass
class EvalConfig:
    """Everything `lego evaluate` can set; the defaults reproduce the paper's evaluation."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    metrics_explicit: bool = False  # the user chose --metrics (BLIP without descriptions is then an error)
    batch_size: int = 32
    device: str = "auto"
    workers: int = 4  # image-decoding threads
    lpips_net: str = "squeeze"
    lpips_weights: str | None = None
    lpips_authors_range: bool = False
    fid_weights: str | None = None
    fid_model: str | None = None
    clip_model: str = DEFAULT_CLIP
    blip_models: tuple[str, ...] = DEFAULT_BLIP
    blip_prompt: str = PROMPT
    blip_beams: int = 3
    blip_min_length: int = 5
    blip_max_length: int = 20
    blip_text_encoder: str = "clip"  # clip | egovlp (the authors' variant: EgoVLP's text branch)
    egovlp: str | None = None  # checkpoint file; default: egovlp.pth / epic_mir_plus.pth in the torch cache
    egovlp_frames: int | None = None  # clip length; default 16 for an epic* checkpoint, else 4
    egovlp_tokenizer: str = "distilbert-base-uncased"
    generated_field: str | None = None
    max_member_mb: float = 64  # a shard member larger than this is left unread and reported
    report_metric: str | None = None
    report_samples: int = 8
    seed: int = 0

    def __post_init__(self):
        ms = tuple(dict.fromkeys(METRIC_ALIASES.get(m.strip().lower(), m.strip().lower())
                                 for m in self.metrics if m.strip()))
        bad = [m for m in ms if m not in ALL_METRICS]
        if bad:
            raise BadInput(f"--metrics: unknown metric {bad[0]!r}; want some of {','.join(ALL_METRICS)}")
        if not ms:
            raise BadInput(f"--metrics: none given; want some of {','.join(ALL_METRICS)}")
        self.metrics = ms
        if self.batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        if self.blip_text_encoder not in ("clip", "egovlp"):
            raise BadInput(f"--blip-text-encoder: {self.blip_text_encoder!r}; want clip or egovlp")
        if self.egovlp_frames is not None and self.egovlp_frames < 1:
            raise BadInput(f"--egovlp-frames must be at least 1 (got {self.egovlp_frames})")


@dataclass
class SetResult:
    """One generated set's results (what metrics.json, the CSV and report.html are written from)."""

    name: str
    generated: str
    reference: str
    matching: dict
    n: int
    metrics: dict[str, dict]
    rows: list[dict]
    columns: list[str]
    text_columns: list[str]
    higher_is_better: dict[str, bool]
    skipped: dict
    resized: int
    settings: dict
    report_metric: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # metric family -> seconds in its update/finish
    thumbs: dict[str, dict] = field(default_factory=dict)  # key -> {"input"|"generated"|"reference": jpeg bytes}
    picks: dict[str, list[str]] = field(default_factory=dict)  # "best"|"worst"|"random" -> keys

    def summary(self) -> dict:
        return {
            "name": self.name, "generated": self.generated, "reference": self.reference, "n": self.n,
            "metrics": self.metrics, "matching": self.matching, "skipped": self.skipped,
            "resized_to_reference": self.resized, "settings": self.settings,
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass
class EvalResult:
    sets: list[SetResult]
    config: dict
    outputs: dict[str, str] = field(default_factory=dict)

    def table(self) -> tuple[list[str], list[list]]:
        """(header, rows): one row per generated set, the mean of each per-image metric and the
        value of each set-level one."""
        cols: list[str] = []
        for s in self.sets:
            for c in s.metrics:
                if c not in cols:
                    cols.append(c)
        rows = []
        for s in self.sets:
            row = [s.name, s.n]
            for c in cols:
                m = s.metrics.get(c)
                row.append(None if m is None else m.get("mean", m.get("value")))
            rows.append(row)
        return ["set", "n"] + cols, rows

    def lines(self) -> list[str]:
        """What `lego evaluate` prints (see `report.summary_lines`)."""
        from .report import summary_lines

        return summary_lines(self)

    def summary(self) -> dict:
        header, rows = self.table()
        out = {"table": {"columns": header, "rows": rows}, "sets": [s.summary() for s in self.sets]}
        if self.outputs:
            out["outputs"] = self.outputs
        return out


def _stats(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def _load(gen: Source, ref: Source, key: str, with_input: bool = False):
    """(key, (generated, reference, input or None), resized?) or (key, None, reason) when an image
    does not decode. An input frame that is missing or does not decode is None (never fatal)."""
    try:
        g = decode_image(gen.image(key))
    except Exception as e:  # noqa: BLE001 - one bad image never stops the run
        return key, None, f"generated image does not decode ({type(e).__name__})"
    try:
        r = decode_image(ref.image(key))
    except Exception as e:  # noqa: BLE001
        return key, None, f"reference image does not decode ({type(e).__name__})"
    resized = g.size != r.size
    x = None
    if with_input:
        try:
            data = ref.input_image(key)
            x = decode_image(data) if data else None
        except Exception:  # noqa: BLE001
            log.warning("%s: the input frame does not decode; metrics that need it leave this sample out", key)
    return key, (resize_to(g, r.size), r, x), resized


def _thumb(im, size: int = 192) -> bytes:
    import io

    im = im.copy()
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def evaluate_set(name: str, gen: Source, ref: Source, metrics: Sequence[Metric], cfg: EvalConfig,
                 progress: bool = False) -> SetResult:
    """Score one generated set against the reference with already-built metrics."""
    from lego_core.data.shards import SkipStats

    m = match(gen, ref)
    if m.only_generated or m.only_reference:
        log.warning("%s: %d generated image(s) have no reference (e.g. %s); %d reference(s) have no generated image "
                    "(e.g. %s); evaluating the %d in common", name, len(m.only_generated),
                    ", ".join(m.only_generated[:3]) or "-", len(m.only_reference),
                    ", ".join(m.only_reference[:3]) or "-", len(m.keys))
    texts = {k: ref.texts(k) for k in m.keys}
    for metric in metrics:
        metric.start(m.keys)
    stats = SkipStats()
    _count_unread(stats, gen, ref)
    rows: dict[str, dict] = {}
    resized = 0
    timings: dict[str, float] = {}
    bs = cfg.batch_size
    with_input = any(getattr(mt, "needs_input", False) for mt in metrics)
    chunks = [m.keys[i:i + bs] for i in range(0, len(m.keys), bs)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(m.keys), desc=f"evaluate {name}", unit="img", leave=False)
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        submit = lambda keys: [pool.submit(_load, gen, ref, k, with_input) for k in keys]  # noqa: E731
        pending = submit(chunks[0]) if chunks else []
        for ci in range(len(chunks)):
            loaded = [f.result() for f in pending]
            pending = submit(chunks[ci + 1]) if ci + 1 < len(chunks) else []
            keys, gens, refs, inputs = [], [], [], []
            for key, pair, info in loaded:
                if pair is None:
                    stats.add(info, key=key)
                    log.warning("skipping %s: %s", key, info)
                    continue
                keys.append(key)
                gens.append(pair[0])
                refs.append(pair[1])
                inputs.append(pair[2])
                resized += bool(info)
            if keys:
                batch = Batch(keys, gens, refs, inputs=inputs if with_input else [],
                              descriptions=[texts[k][1] for k in keys], labels=[texts[k][0] for k in keys])
                for k in keys:
                    rows[k] = {"key": k, "label": texts[k][0] or "", "description": texts[k][1] or ""}
                for metric in metrics:
                    t0 = time.perf_counter()
                    updated = metric.update(batch)
                    timings[metric.name] = timings.get(metric.name, 0.0) + time.perf_counter() - t0
                    for col, vals in updated.items():
                        for k, v in zip(keys, vals):
                            rows[k][col] = v
            if bar is not None:
                bar.update(len(loaded))
    if bar is not None:
        bar.close()
    if not rows:
        raise BadInput(f"{name}: none of the {len(m.keys)} matched images could be decoded ({stats.summary()})")

    columns = [c for metric in metrics for c in metric.columns]
    text_columns = [c for metric in metrics for c in metric.text_columns]
    hib = {c: v for metric in metrics for c, v in metric.higher_is_better.items()}
    results: dict[str, dict] = {}
    for metric in metrics:
        for c in metric.columns:
            results[c] = {**_stats([r.get(c) for r in rows.values()]), "higher_is_better": hib[c]}
        t0 = time.perf_counter()
        finished = metric.finish()
        timings[metric.name] = timings.get(metric.name, 0.0) + time.perf_counter() - t0
        for c, v in finished.items():  # a per-image column's entry may gain set-level facts (counts)
            results[c] = {**results.get(c, {}), **v, "higher_is_better": hib[c]}
    ordered = [rows[k] for k in m.keys if k in rows]
    report_metric = cfg.report_metric or next(
        (c for c in (*PREFERRED_REPORT_METRIC, *columns) if c in columns), None)
    if report_metric is not None and report_metric not in columns:
        raise BadInput(f"--report-metric {report_metric}: not a per-image metric of this run "
                       f"(have: {', '.join(columns)})")
    res = SetResult(
        name=name, generated=gen.path, reference=ref.path, matching=m.summary(), n=len(rows), metrics=results,
        rows=ordered, columns=columns, text_columns=text_columns, higher_is_better=hib, skipped=stats.as_dict(),
        resized=resized, settings={mt.name: mt.settings() for mt in metrics}, report_metric=report_metric,
        timings=timings,
    )
    _pick_and_thumb(res, gen, ref, cfg)
    return res


def _pick_and_thumb(res: SetResult, gen: Source, ref: Source, cfg: EvalConfig) -> None:
    """Choose the report's best / worst / random samples and keep small JPEG thumbnails of them."""
    n = max(0, cfg.report_samples)
    if not n:
        return
    keys = [r["key"] for r in res.rows]
    if res.report_metric:
        scored = [(r[res.report_metric], r["key"]) for r in res.rows if r.get(res.report_metric) is not None]
        scored.sort(key=lambda t: t[0], reverse=res.higher_is_better.get(res.report_metric, True))
        res.picks["best"] = [k for _, k in scored[:n]]
        res.picks["worst"] = [k for _, k in scored[::-1][:n]]
    chosen = {k for ks in res.picks.values() for k in ks}
    rest = [k for k in keys if k not in chosen] or keys
    res.picks["random"] = sorted(random.Random(cfg.seed).sample(rest, min(n, len(rest))), key=keys.index)
    for k in dict.fromkeys(k for ks in res.picks.values() for k in ks):
        t: dict[str, bytes | None] = {}
        try:
            r = decode_image(ref.image(k))
            t["reference"] = _thumb(r)
            t["generated"] = _thumb(resize_to(decode_image(gen.image(k)), r.size))
            data = ref.input_image(k)
            t["input"] = _thumb(decode_image(data)) if data else None
        except Exception:  # noqa: BLE001 - a thumbnail is never worth failing the run
            continue
        res.thumbs[k] = t


def _count_unread(stats, gen: Source, ref: Source) -> None:
    """Shards (or members) the sources could not read count as skipped, so the summary says so."""
    from lego_core.data.shards import CORRUPT

    for src in (gen, ref):
        for what in getattr(src, "broken", []):
            log.warning("%s shard skipped: %s", getattr(src, "role", ""), what)
            stats.add(CORRUPT, url=what.split(": ", 1)[0], detail=what)
        for what in getattr(src, "too_big", []):
            log.warning("%s sample skipped: %s", getattr(src, "role", ""), what)
            stats.add("member over the size limit", key=what.split(": ", 1)[0], detail=what)


def evaluate(generated: Mapping[str, object] | Sequence[object] | str, reference, cfg: EvalConfig | None = None,
             out: str | None = None, progress: bool = False) -> EvalResult:
    """Evaluate one or several generated sets (name → folder or shards) against `reference`
    (folder or shards). Writes metrics.json / samples.csv / report.html under `out` when given."""
    from lego_core.device import pick_device

    cfg = cfg or EvalConfig()
    gens = named_sets(generated)
    ref = open_source(reference, "reference", max_member_mb=cfg.max_member_mb)
    try:
        sources = {name: open_source(spec, "generated", cfg.generated_field, cfg.max_member_mb)
                   for name, spec in gens.items()}
        matches = {name: match(src, ref) for name, src in sources.items()}  # fail fast, before loading models
        all_keys = sorted({k for mt in matches.values() for k in mt.keys})
        cfg = check_descriptions(cfg, ref, all_keys)
        cfg = check_egovlp(cfg, ref, all_keys)
        cfg = check_input_frames(cfg, ref, all_keys)
        device = pick_device(cfg.device)
        metrics = build_metrics(cfg, device)
        sets = []
        try:
            for name, src in sources.items():
                sets.append(evaluate_set(name, src, ref, metrics, cfg, progress))
        finally:
            for src in sources.values():
                src.close()
    finally:
        ref.close()
    result = EvalResult(sets, {**asdict(cfg), "device": device})
    if out:
        from .report import write_outputs

        result.outputs = write_outputs(result, out)
    return result


def named_sets(generated) -> dict[str, object]:
    """name → spec. Accepts a mapping, one spec, or a list of specs / "NAME=SPEC" strings."""
    import os

    if isinstance(generated, Mapping):
        return dict(generated)
    items = [generated] if isinstance(generated, (str, os.PathLike)) else list(generated)
    out: dict[str, object] = {}
    for item in items:
        name, spec = None, item
        if isinstance(item, str) and "=" in item and not os.path.exists(item):
            name, _, spec = item.partition("=")
        if name is None:
            base = (os.path.basename(os.path.normpath(os.fspath(spec))) if isinstance(spec, (str, os.PathLike))
                    else "set")
            name = os.path.splitext(base)[0] or "generated"
        base_name, i = name, 2
        while name in out:
            name, i = f"{base_name}-{i}", i + 1
        out[name] = spec
    if not out:
        raise BadInput("no --generated given")
    return out
