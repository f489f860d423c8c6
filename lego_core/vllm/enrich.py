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
``{stem}.rejects-I-of-K.jsonl``).
"""

from __future__ import annotations


import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from lego_core.atomic import write_atomic
from lego_core.data.shards import ShardMap, SkipStats, skipped_lines, write_empty_shard
from lego_core.errors import BadInput

log = logging.getLogger("lego.enrich")

SLURM_COUNT, SLURM_ID, SLURM_MIN, SLURM_STEP = (
    "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


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
# Splitting across tasks


def resolve_task(num_shards: int | None, shard_index: int | None, env: dict | None = None) -> tuple[int, int]:
    """(I, K) from the options, else from a SLURM job array's environment, else (0, 1).

    SLURM numbers array tasks from SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP
    (``--array=1-8`` gives IDs 1..8): I = (ID - MIN) / STEP.
    """
    env = os.environ if env is None else env
    if (num_shards is None) != (shard_index is None):
        if num_shards is None and SLURM_COUNT in env:
            num_shards = _env_int(env, SLURM_COUNT)
        elif shard_index is None and SLURM_ID in env:
            shard_index = _slurm_index(env)
        else:
            raise BadInput("give both --num-shards K and --shard-index I (or neither, inside a SLURM job array)")
    if num_shards is None:
        if SLURM_COUNT in env and SLURM_ID in env:
            num_shards, shard_index = _env_int(env, SLURM_COUNT), _slurm_index(env)
        else:
            num_shards, shard_index = 1, 0
    if num_shards < 1:
        raise BadInput(f"--num-shards must be >= 1, not {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise BadInput(f"--shard-index must be in 0..{num_shards - 1} for --num-shards {num_shards}, not {shard_index}")
    return shard_index, num_shards


def _env_int(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise BadInput(f"{name}={env[name]!r} is not an integer") from None


def _slurm_index(env) -> int:
    task_id = _env_int(env, SLURM_ID)
    low = _env_int(env, SLURM_MIN) if SLURM_MIN in env else 0
    step = _env_int(env, SLURM_STEP) if SLURM_STEP in env else 1
    return (task_id - low) // max(step, 1)


def my_part(n_inputs: int, shard_index: int, num_shards: int) -> list[int]:
    """The input shard indices task `shard_index` of `num_shards` enriches (round robin)."""
    return list(range(shard_index, n_inputs, num_shards))


# ---------------------------------------------------------------------------------------------
# Output bookkeeping


def count_samples(url: str) -> int | None:
    """Samples in a local shard from its tar headers (None for remote URLs or unreadable shards)."""
    from lego_core.data.shards import is_remote, read_keys

    if is_remote(url):
        return None
    try:
        return len(read_keys([url]))
    except BadInput:
        return None


def _prune_rejects(path: str, redo_urls: set[str], truncate: bool) -> None:
    """Keep the reject lines of shards that stay finished; drop those of shards about to be redone."""
    if truncate or not os.path.exists(path):
        write_atomic(path, "")
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("url") in redo_urls:
                continue
        except ValueError:
            continue
        keep.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(keep))


def _check_manifest(path: str, inputs: list[str], outputs: list[str], overwrite: bool) -> None:
    """Refuse to resume into an --out that was filled from a different list of input shards."""
    if overwrite or not os.path.exists(path):
        return
    try:
        before = json.loads(open(path, encoding="utf-8").read()).get("inputs")
    except (OSError, ValueError):
        return
    if before is None or before == inputs:
        return
    if any(os.path.exists(o) for o in outputs):
        raise BadInput(f"{path}: this --out was written from a different list of input shards "
                       f"({len(before)} before, {len(inputs)} now); use another --out or --overwrite")


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
    return {"vllm": model_identity(cfg.vllm), "question": question_template(cfg.question), "greedy": cfg.greedy, **sampling,
            "max_text_tokens": cfg.max_text_tokens, "max_new_tokens": cfg.max_new_tokens, "dtype": dtype,
            "aspect": cfg.aspect}


def storage_estimate(m: int, d: int, max_text_tokens: int, max_new_tokens: int) -> tuple[int, str]:
    """(bytes per sample added at most, a sentence saying so) for H_i (m x d) and H_t (<= n x d)."""
    n = min(max_text_tokens, max_new_tokens) if max_text_tokens else max_new_tokens
    img, txt = m * d * 2, n * d * 2
    total = img + txt + 2 * 512 + 4096  # + npy/tar headers and the description
    text = (f"each sample gains up to {_mb(total)}: H_i {m} x {d} float16 = {_mb(img)}, "
            f"H_t <= {n} x {d} float16 = {_mb(txt)}"
            + ("" if max_text_tokens else " (no --max-text-tokens: bounded only by --max-new-tokens)"))
    return total, text


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def batch_seed(seed: int, shard: int, batch: int) -> int:
    """The sampling seed of one batch: fixed by (seed, input shard index, batch number in the shard),
    so a resumed run draws what an uninterrupted one would have."""
    digest = hashlib.sha256(f"lego-enrich-{seed}-{shard}-{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
    _check_manifest(manifest, listed, outputs, cfg.overwrite)
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

    summary.rejects_file = cfg.rejects or layout.sidecar( "rejects.jsonl" if count == 1 else f"rejects-{index}-of-{count}.jsonl")
    _prune_rejects(summary.rejects_file, {inputs[j] for j in todo}, cfg.overwrite)
    stats = SkipStats(rejects=summary.rejects_file)  # replaced by a bar-moving one when there is work

    if progress:
        log.info("%s", summary.storage)
    if todo:
        sizes = [count_samples(inputs[j]) for j in todo]
        total = None if any(s is None for s in sizes) else sum(sizes)
        if total is not None and progress:
            log.info("about %s for the %d samples of this run", _mb(total * summary.bytes_per_sample), total)
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
