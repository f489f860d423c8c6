"""`lego enrich`: run the (tuned) VLLM over every sample; add R, H_i and H_t to the shards.

Each input shard becomes one output shard with the same index in the output pattern
(``in/shard-000007.tar`` -> ``format(--out, 7)``), holding every valid sample of the input with
``enriched.txt``, ``vllm_img.npy`` and ``vllm_txt.npy`` added (replaced if present) and every other
file byte-identical. That 1:1 mapping is what makes the stage

- **splittable**: task I of K (``--num-shards K --shard-index I``, by default from a SLURM job
  array's ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID``) takes the input shards whose index
  is I mod K. The parts are disjoint and together cover every shard, and all tasks can share one
  ``--out`` pattern, since each writes (and cleans up) only its own output indices;
- **resumable per output shard**: an output shard is written under a hidden temp name and renamed
  when complete, so a final name only ever holds a finished shard; a rerun skips the input shards
  whose output exists (``--overwrite`` redoes them) and deletes the temps of killed runs.

A shard whose samples were all rejected still gets its (empty) output shard, so it counts as done.
Samples that cannot be enriched (an image that does not decode, a failed generation, an empty
answer, a non-finite embedding) are skipped and written to the rejects file with the reason.
Beside the shards: ``{stem}.enrich.json`` (the resolved config and the input list; a rerun with
other inputs into the same --out is refused) and ``{stem}.rejects.jsonl`` (per task when split:
``{stem}.rejects-I-of-K.jsonl``). That bookkeeping (the split, the manifest, the rejects) is
`enrich_plan`; this module runs the model over the shards.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from lego_core.data.shards import ShardMap, SkipStats, skipped_lines, write_empty_shard
from lego_core.errors import BadInput
from lego_core.vllm.enrich_plan import (batch_seed, check_manifest, count_samples, megabytes, my_part, prune_rejects,
                                        resolve_task, storage_estimate)

log = logging.getLogger("lego.enrich")


@dataclass
class EnrichConfig:
    shards: list[str]
    vllm: str
    out: str                                  # output shard pattern (index = the input shard's index)
    batch_size: int = 16
    num_shards: int | None = None             # K: None -> SLURM_ARRAY_TASK_COUNT, else 1
    shard_index: int | None = None            # I: None -> SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0
    max_text_tokens: int = 77                 # rows of H_t kept (0: all); the conditioner uses 77
    max_new_tokens: int = 1024                # paper
    greedy: bool = False
    temperature: float = 0.2                  # paper
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    aspect: str = "crop"                      # "crop" (processor, as the authors) or "pad" to a square
    question: str | None = None               # the question template, "{}" for the action; None: the authors'
    rejects: str | None = None
    overwrite: bool = False


@dataclass
class EnrichSummary:
    written: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards_written: list[str] = field(default_factory=list)
    shards_done_before: int = 0
    task: tuple[int, int] = (0, 1)
    seconds: float = 0.0
    generate_seconds: float = 0.0
    tokens: int = 0
    hit_max_new_tokens: int = 0
    bytes_per_sample: int = 0
    storage: str = ""
    rejects_file: str | None = None

    @property
    def samples_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = dict(self.skipped)
        d["skipped_total"] = sum(self.skipped.values())
        d["samples_per_second"] = round(self.samples_per_second, 4)
        d["tokens_per_second"] = round(self.tokens / self.generate_seconds, 2) if self.generate_seconds else 0.0
        d["task"] = {"shard_index": self.task[0], "num_shards": self.task[1]}
        return d

    def lines(self) -> list[str]:
        tps = self.tokens / self.generate_seconds if self.generate_seconds else 0.0
        out = [f"samples enriched: {self.written} in {self.seconds:.1f}s ({self.samples_per_second:.2f} samples/s, "
               f"{tps:.1f} generated tokens/s)"
               + (f"; {self.already_done} already done in {self.shards_done_before} finished shard(s)"
                  if self.shards_done_before else "")]
        if self.task[1] > 1:
            out.append(f"task: part {self.task[0]} of {self.task[1]}")
        if self.hit_max_new_tokens:
            out.append(f"descriptions cut at --max-new-tokens: {self.hit_max_new_tokens}")
        out.extend(skipped_lines(self.skipped, self.rejects_file))
        if self.storage:
            out.append(f"storage: {self.storage}")
        out.extend(f"shard: {s}" for s in self.shards_written)
        return out


# ---------------------------------------------------------------------------------------------
# Settings


def content_settings(cfg: EnrichConfig) -> dict:
    """The settings that decide what an enriched sample holds: the VLLM (by its files), the
    question, decoding and sizes. Sampling depends on the seed and on how samples are batched, so
    those count only without --greedy; --device counts through the dtype it resolves to."""
    from lego_core.device import pick_device
    from lego_core.provenance import model_identity
    from lego_core.vllm.templates import question_template

    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "float16" if pick_device(cfg.device).startswith("cuda") else "float32"
    sampling = {} if cfg.greedy else {"temperature": cfg.temperature, "seed": cfg.seed, "batch_size": cfg.batch_size}
    return {"vllm": model_identity(cfg.vllm), "question": question_template(cfg.question), "greedy": cfg.greedy,
            **sampling, "max_text_tokens": cfg.max_text_tokens, "max_new_tokens": cfg.max_new_tokens, "dtype": dtype,
            "aspect": cfg.aspect}


def check_config(cfg: EnrichConfig) -> None:
    if cfg.batch_size < 1:
        raise BadInput(f"--batch-size must be >= 1, not {cfg.batch_size}")
    if cfg.max_text_tokens < 0:
        raise BadInput(f"--max-text-tokens must be >= 0 (0 keeps every row), not {cfg.max_text_tokens}")
    if cfg.max_new_tokens < 1:
        raise BadInput(f"--max-new-tokens must be >= 1, not {cfg.max_new_tokens}")
    if not cfg.greedy and not cfg.temperature > 0:
        raise BadInput(f"--temperature must be > 0 (or pass --greedy), not {cfg.temperature}")
    if cfg.aspect not in ("crop", "pad"):
        raise BadInput(f"--aspect must be 'crop' or 'pad', not {cfg.aspect!r}")
    from lego_core.vllm.templates import question_template

    question_template(cfg.question)           # one place for the action, or exit 2 before any work
    if not cfg.out:
        raise BadInput("--out PATTERN is required, e.g. --out enriched/shard-%06d.tar")


# ---------------------------------------------------------------------------------------------
# The stage


class _Enricher:
    def __init__(self, cfg: EnrichConfig, model, processor, summary: EnrichSummary, stats, bar):
        self.cfg, self.model, self.processor = cfg, model, processor
        self.summary, self.stats, self.bar = summary, stats, bar

    def _describe(self, images, labels, questions, seed):
        from lego_core.vllm.describe import describe_and_embed

        c = self.cfg
        return describe_and_embed(self.model, self.processor, images, labels, greedy=c.greedy,
                                  temperature=c.temperature, max_new_tokens=c.max_new_tokens, seed=seed,
                                  batch_size=len(images), max_text_tokens=c.max_text_tokens or None,
                                  aspect=c.aspect, questions=questions)

    def flush(self, batch: list[tuple[dict, object, str, str]], writer, seed: int) -> None:
        import numpy as np

        from lego_core.data.schema import ENRICHED, VLLM_IMG, VLLM_TXT

        if not batch:
            return
        images = [b[1] for b in batch]
        labels = [b[2] for b in batch]
        questions = [b[3] for b in batch]
        started = time.perf_counter()
        try:
            outputs = self._describe(images, labels, questions, seed)
        except Exception as e:  # noqa: BLE001 - isolate the sample that breaks the batch
            self.summary.generate_seconds += time.perf_counter() - started
            if len(batch) == 1:
                self._reject(batch[0][0], "generation failed", f"{type(e).__name__}: {e}")
                return
            log.warning("a batch of %d failed (%s: %s); retrying its samples one at a time",
                        len(batch), type(e).__name__, e)
            _free_memory()
            for k, item in enumerate(batch):
                self.flush([item], writer, seed + k + 1)
            return
        self.summary.generate_seconds += time.perf_counter() - started
        for (sample, *_), o in zip(batch, outputs):
            self.summary.tokens += len(o.token_ids)
            if not o.description.strip():
                self._reject(sample, "empty description", None)
                continue
            if not (np.isfinite(o.image_embeds).all() and np.isfinite(o.text_embeds).all()):
                self._reject(sample, "non-finite embedding", "H_i or H_t has inf/nan in float16")
                continue
            self.summary.hit_max_new_tokens += not o.stopped
            out = {k: v for k, v in sample.items() if not k.startswith("_") or k == "__key__"}
            out[ENRICHED] = o.description
            out[VLLM_IMG] = o.image_embeds
            out[VLLM_TXT] = o.text_embeds
            writer.write(out)
            self.summary.written += 1
            self.bar.update(1)

    def _reject(self, sample: dict, reason: str, detail) -> None:
        self.stats.add(reason, key=sample.get("__key__"), url=sample.get("__url__"), detail=detail)

    def shard(self, index: int, url: str, final: str) -> None:
        from PIL import Image

        from lego_core.data.schema import INPUT, decode_meta
        from lego_core.data.shards import ShardWriter, iter_samples
        from lego_core.vllm.templates import inference_question

        batch: list = []
        batch_no = 0
        with ShardWriter(final, max_samples=1 << 62, max_size=1 << 62) as writer:
            for sample in iter_samples(url, stats=self.stats):  # invalid samples: counted, skipped
                try:
                    with Image.open(io.BytesIO(sample[INPUT])) as im:
                        image = im.convert("RGB")
                except Exception as e:  # noqa: BLE001
                    self._reject(sample, "input.jpg does not decode", f"{type(e).__name__}: {e}")
                    continue
                meta = decode_meta(sample["meta.json"])
                try:   # an imported sample is asked about the action in the authors' wording
                    question = inference_question(meta.label, self.cfg.question,
                                                  action=meta.extra.get("question_action"))
                except BadInput as e:
                    self._reject(sample, "unusable action label", str(e))
                    continue
                batch.append((sample, image, meta.label, question))
                if len(batch) == self.cfg.batch_size:
                    self.flush(batch, writer, batch_seed(self.cfg.seed, index, batch_no))
                    batch, batch_no = [], batch_no + 1
            self.flush(batch, writer, batch_seed(self.cfg.seed, index, batch_no))
            written = writer.total
        if not written:
            write_empty_shard(final)
        self.summary.shards_written.append(final)


class _Stats(SkipStats):
    """`SkipStats` that also moves the progress bar (a skipped sample is a processed one)."""

    def __init__(self, rejects, bar):
        super().__init__(rejects=rejects)
        self.bar = bar

    def add(self, reason, key=None, url=None, detail=None):
        super().add(reason, key=key, url=url, detail=detail)
        self.bar.update(1)


def _free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def enrich(cfg: EnrichConfig, *, progress: bool = True, model=None, processor=None) -> EnrichSummary:
    """Run the stage (task I of K); resumable. `model`/`processor` may be passed in already loaded
    (then `cfg.vllm` only names them in the saved config). Returns what was written and skipped."""
    from tqdm import tqdm

    from lego_core.data import shards
    from lego_core.provenance import pin_settings
    from lego_core.vllm.load import embedding_shape, load_config, load_vllm

    check_config(cfg)
    started = time.perf_counter()
    index, count = resolve_task(cfg.num_shards, cfg.shard_index)
    inputs = shards.expand_shards(cfg.shards)
    layout = ShardMap(inputs, cfg.out)
    pattern, outputs = layout.pattern, layout.outputs
    if model is None:
        vllm_config = load_config(cfg.vllm)
    else:
        vllm_config = model.config

    summary = EnrichSummary(task=(index, count))
    m, d = embedding_shape(vllm_config)
    summary.bytes_per_sample, summary.storage = storage_estimate(m, d, cfg.max_text_tokens, cfg.max_new_tokens)

    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    manifest = layout.sidecar("enrich.json")
    listed = layout.listed_inputs()
    check_manifest(manifest, listed, outputs, cfg.overwrite)
    record = {k: v for k, v in asdict(cfg).items() if k not in ("num_shards", "shard_index", "shards", "overwrite")}
    pin_settings(manifest, content_settings(cfg), out=cfg.out, overwrite=cfg.overwrite,
                 has_output=any(os.path.exists(o) for o in outputs), extra={**record, "inputs": listed})

    todo: list[int] = []
    for j in my_part(len(inputs), index, count):
        layout.clean(j)
        if layout.done(j):
            if cfg.overwrite:
                os.remove(outputs[j])
            else:
                summary.shards_done_before += 1
                summary.already_done += count_samples(outputs[j]) or 0
                continue
        todo.append(j)
    if not my_part(len(inputs), index, count):
        log.warning("task %d of %d has no input shard (%d shards for %d tasks): nothing to do",
                    index, count, len(inputs), count)

    summary.rejects_file = cfg.rejects or layout.sidecar("rejects.jsonl" if count == 1
                                                        else f"rejects-{index}-of-{count}.jsonl")
    prune_rejects(summary.rejects_file, {inputs[j] for j in todo}, cfg.overwrite)
    stats = SkipStats(rejects=summary.rejects_file)  # replaced by a bar-moving one when there is work

    if progress:
        log.info("%s", summary.storage)
    if todo:
        sizes = [count_samples(inputs[j]) for j in todo]
        total = None if any(s is None for s in sizes) else sum(sizes)
        if total is not None and progress:
            log.info("about %s for the %d samples of this run", megabytes(total * summary.bytes_per_sample), total)
        if model is None:
            if not progress:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            model, processor = load_vllm(cfg.vllm, device=cfg.device, dtype=cfg.dtype)
        run_started = time.perf_counter()
        with tqdm(total=total, unit="sample", desc="enrich", disable=not progress, dynamic_ncols=True) as bar:
            stats = _Stats(summary.rejects_file, bar)
            worker = _Enricher(cfg, model, processor, summary, stats, bar)
            for j in todo:
                worker.shard(j, inputs[j], outputs[j])
        run_seconds = time.perf_counter() - run_started
    else:
        run_seconds = 0.0
    summary.skipped = Counter(stats.counts)
    summary.seconds = run_seconds or (time.perf_counter() - started)
    if summary.skipped:
        log.warning("skipped %d samples (%s); see %s", stats.total,
                    ", ".join(f"{r}: {n}" for r, n in stats.counts.most_common()), summary.rejects_file)
    return summary


__all__ = ["EnrichConfig", "EnrichSummary", "enrich", "resolve_task", "my_part", "storage_estimate", "batch_seed"]
