"""`lego tune-vllm`: visual instruction tuning of a LLaVA on curated shards, with DeepSpeed.

The recipe is the paper's (the authors ran LLaVA's `train_mem.py` with `zero3_offload.json`):

- one example per sample: the input frame X, a question drawn from the ten templates with the
  action label (`templates.tuning_question`, seeded by (seed, epoch, key), so a resumed run asks
  what an uninterrupted one would have), and the answer = `curated.txt`;
- the conversation is rendered by the model's own chat template (LLaVA-1.5's format when it has
  none) and tokenised with the image by the processor; the labels are -100 everywhere but the
  answer tokens: those the template marks with `{% generation %}` when it does, else the tokens
  after the prompt; the labelled answer always ends with the tokenizer's EOS, as in LLaVA's
  recipe (added when the template has none: llava-hf's); sequences are cut at `max_length`
  (2048), answers only — a prompt never loses image tokens;
- the CLIP vision tower is frozen (`train_vision_tower` trains a random one too); the projector
  and the language model (embeddings and lm_head included) are trained with AdamW, lr 2e-5,
  weight decay 0, cosine schedule with 3 % linear warmup, 3 epochs, gradient clipping 1.0, bf16
  where the GPU supports it, gradient checkpointing;
- DeepSpeed ZeRO-3 by default (optimizer / parameter CPU offload as options), through the engine
  `lego train` uses: launch detection, atomic checkpoints with exact resume, logging;
- the result is a transformers LLaVA folder (safetensors; ZeRO-3 partitions gathered) plus the
  processor: `RUN/model/`, which `lego enrich --vllm` and `lego generate --vllm` load.

The image goes through `prompting.prepare_image` with the same `aspect` as `lego enrich`, so the
model is tuned on what it later sees.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lego_core.engine.config import EngineOptions
from lego_core.engine.loop import Recipe, run_training
from lego_core.errors import BadInput
from lego_core.vllm.tune_data import (
    DecodeCurated, SkipSample, _as_list, answer_mask_kind, check_curated, collate_examples, encode_example,
    question_seed,
)

log = logging.getLogger("lego.tune")



@dataclass
class TuneConfig:
    shards: list[str]
    vllm: str                                     # the base LLaVA: a folder or a hub id
    out: str                                      # the run folder
    epochs: float = 3.0                           # paper
    max_steps: int | None = None                  # optimizer steps; default: --epochs over the data
    learning_rate: float = 2e-5                   # paper
    weight_decay: float = 0.0                     # paper
    warmup_ratio: float = 0.03                    # paper: cosine schedule, 3 % linear warmup
    max_length: int = 2048                        # paper (model_max_length)
    gradient_checkpointing: bool = True           # paper
    train_vision_tower: bool = False              # paper: frozen (a pretrained CLIP); True for a random one
    aspect: str = "crop"                          # the image preparation of `lego enrich`
    seed: int = 0
    workers: int = 2                              # DataLoader workers per rank (JPEG decoding)
    shuffle_buffer: int = 1000
    resample: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2                     # a 13B checkpoint with optimizer states is ~200 GB
    resume: str | None = None                     # a checkpoint folder; default: the run's latest
    overwrite: bool = False
    log_every: int = 10
    progress: bool = True
    # paper: 16 per GPU, no accumulation, ZeRO-3 (the authors also offloaded to CPU)
    engine: EngineOptions = field(default_factory=lambda: EngineOptions(micro_batch=16, grad_accum=1, zero_stage=3))


# ---------------------------------------------------------------------------------------------
# Model


def _parts(model):
    inner = getattr(model, "model", model)
    vision = getattr(inner, "vision_tower", None) or getattr(model, "vision_tower", None)
    projector = getattr(inner, "multi_modal_projector", None) or getattr(model, "multi_modal_projector", None)
    if vision is None or projector is None:
        raise BadInput(f"{type(model).__name__} has no vision_tower / multi_modal_projector: expected a LLaVA")
    return vision, projector


def freeze_vision_tower(model, freeze: bool = True) -> list:
    """Freeze the vision tower (the paper's recipe: CLIP is pretrained); return the trainable
    parameters (projector + language model, and the tower when `freeze` is False: a random tower,
    as the kit's, has no features of its own worth keeping)."""
    vision, _ = _parts(model)
    vision.requires_grad_(not freeze)
    return [p for p in model.parameters() if p.requires_grad]


def load_base(name: str, dtype, ds_config: dict):
    """The base model and processor. Under ZeRO-3 the weights load straight into partitions
    (transformers' `HfDeepSpeedConfig` + `deepspeed.zero.Init`), so no rank ever holds the whole
    model; the global switch is cleared again afterwards."""
    from lego_core.vllm.load import load_config, read_llava

    load_config(name)                         # one-line errors for a wrong folder / name
    path = Path(name).expanduser()
    name = str(path) if path.is_dir() else name
    zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
    keep = None
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_config)    # must stay alive while loading
    try:
        # as `load_vllm` reads it: a LLaVA v1 import ("projector_type": "linear") keeps its
        # single-linear projector instead of getting a fresh random 2-layer MLP
        return read_llava(name, dtype)
    finally:
        if keep is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, non-reentrant (frozen vision outputs need no grad)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):          # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _optimizer(params, cfg: TuneConfig, ds_config: dict, device):
    """torch AdamW (no FusedAdam JIT build; torch's fused kernel where it has one); with optimizer
    offload, DeepSpeed's CPU Adam when it builds (in place and vectorised: what a 7B model's 112 GB
    of states need), else torch's on the CPU."""
    from lego_core.engine.optim import adamw

    kw = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    if ds_config.get("zero_optimization", {}).get("offload_optimizer"):
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
        except Exception as e:  # noqa: BLE001 - no compiler here: fall back, say so
            log.warning("DeepSpeedCPUAdam unavailable (%s); using torch.optim.AdamW on the CPU (slower)",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            ds_config["zero_force_ds_cpu_optimizer"] = False
        device = "cpu"
    return adamw(params, device, **kw)


def total_steps(cfg: TuneConfig, n_samples: int, world_size: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_step = cfg.engine.micro_batch * cfg.engine.grad_accum * world_size
    return max(1, math.ceil(cfg.epochs * n_samples / per_step))


def check_config(cfg: TuneConfig) -> None:
    if cfg.max_length < 16:
        raise BadInput(f"--max-length must be >= 16, not {cfg.max_length}")
    if cfg.epochs <= 0 and not cfg.max_steps:
        raise BadInput(f"--epochs must be > 0, not {cfg.epochs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise BadInput(f"--max-steps must be >= 1, not {cfg.max_steps}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise BadInput(f"--warmup-ratio must be in [0, 1), not {cfg.warmup_ratio}")
    if cfg.aspect not in ("crop", "pad"):
        raise BadInput(f"--aspect must be 'crop' or 'pad', not {cfg.aspect!r}")
    if cfg.checkpoint_every < 1:
        raise BadInput(f"--checkpoint-every must be >= 1, not {cfg.checkpoint_every}")
    if cfg.engine.micro_batch < 1 or cfg.engine.grad_accum < 1:
        raise BadInput("--batch-size and --grad-accum must be >= 1")
    from lego_core.engine.config import deepspeed_config

    deepspeed_config(cfg.engine, None)            # ZeRO / offload / --deepspeed file problems: now, in one line


# ---------------------------------------------------------------------------------------------
# The stage


def tune(cfg: TuneConfig) -> Path | None:
    """Run (or resume) tuning; returns the exported LLaVA folder (on rank 0; None elsewhere)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    from lego_core.data.shards import expand_shards
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    check_config(cfg)
    urls = expand_shards(cfg.shards)
    n_samples = check_curated(urls)
    if not n_samples and not cfg.max_steps:
        raise BadInput("cannot count the samples of remote shards: pass --max-steps")
    run = Path(cfg.out)
    dist_env = detect_launch()
    device, _ = init_distributed(dist_env)
    try:
        return run_training(TuneRecipe(cfg, urls, run, dist_env.rank, dist_env.world_size, device), n_samples)
    finally:
        shutdown()


class TuneRecipe(Recipe):
    """`lego tune-vllm` in the shared loop: LLaVA with its vision tower frozen, cross-entropy on the
    answer tokens, a question template drawn per sample and epoch, a transformers folder export."""

    name = "tune-vllm"
    config_file = "tune-config.json"
    rate_name = "tokens_per_s"

    def __init__(self, cfg: TuneConfig, urls, run: Path, rank: int, world: int, device):
        super().__init__(cfg, run, rank, world, device)
        self.urls = urls

    def total_steps(self, n_samples: int) -> int:
        return total_steps(self.cfg, n_samples, self.world)

    def build(self, ds_config: dict, total: int):
        from transformers import get_cosine_schedule_with_warmup

        from lego_core.engine.config import precision_dtype

        cfg = self.cfg
        self.dtype = precision_dtype(ds_config)
        if self.rank != 0 or not cfg.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        model, self.processor = load_base(cfg.vllm, self.dtype, ds_config)
        model.config.use_cache = False
        if hasattr(model.config, "text_config"):
            model.config.text_config.use_cache = False
        params = freeze_vision_tower(model, freeze=not cfg.train_vision_tower)
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        optimizer = _optimizer(params, cfg, ds_config, self.device)
        self.warmup = math.ceil(cfg.warmup_ratio * total)
        lr_sched = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=self.warmup, num_training_steps=total)
        return model, optimizer, lr_sched, params

    def ready(self, engine, ds_config: dict) -> None:
        self.zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3

    def resolved(self, total: int, n_samples: int, ds_config: dict) -> dict:
        return {"world_size": self.world, "total_steps": total, "warmup_steps": self.warmup, "samples": n_samples,
                "answer_tokens": answer_mask_kind(self.processor), "deepspeed": ds_config}

    def dataset(self, stats):
        from lego_core.data.schema import CURATED, INPUT, META
        from lego_core.data.shards import make_dataset

        cfg = self.cfg
        self.stats = stats
        dataset = make_dataset(self.urls, shuffle=cfg.shuffle_buffer, resample=cfg.resample, seed=cfg.seed,
                               require=[INPUT, META, CURATED], stats=stats)
        mean = list(getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5))
        dataset.append(DecodeCurated(mean, cfg.aspect))
        tokenizer = self.processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        return dataset, _as_list

    def next_batch(self, batches):
        """The next batch with at least one example: a sample whose prompt is too long is skipped."""
        from lego_core.vllm.templates import tuning_question

        cfg = self.cfg
        while True:
            epoch, in_epoch, samples = next(batches)
            examples = []
            for s in samples:
                question = tuning_question(s["label"], question_seed(cfg.seed, epoch, s["key"]))
                try:
                    examples.append(encode_example(self.processor, s["image"], question, s["answer"],
                                                   max_length=cfg.max_length))
                except SkipSample as e:
                    self.stats.add("prompt too long", key=s["key"], detail=str(e))
                    log.warning("skipped %s: %s", s["key"], e)
            if examples:
                return epoch, in_epoch, collate_examples(examples, self.pad_id)

    def micro_step(self, engine, batch, step: int):
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return engine(**batch).loss, int(batch["attention_mask"].sum())

    def export(self, engine, folder: Path, step: int) -> Path:
        return export(engine, self.processor, folder, self.rank, self.zero3, record=self.cfg)


def export(engine, processor, folder: Path, rank: int, zero3: bool, record: TuneConfig | None = None) -> Path:
    """The trained weights as a transformers LLaVA folder (safetensors) with the processor, written
    to a temp folder beside it and renamed. Under ZeRO-3 the partitions are gathered (layer by layer, to
    rank 0's CPU) first; a collective call."""
    import shutil

    import torch.distributed as dist

    model = engine.module
    if zero3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()   # what accelerate's get_state_dict uses
    else:
        state_dict = model.state_dict() if rank == 0 else None
    if rank == 0:
        model.config.use_cache = True
        if hasattr(model.config, "text_config"):
            model.config.text_config.use_cache = True
        from lego_core.atomic import remove_stale_temps, replace_folder, temp_name

        remove_stale_temps(folder.parent, lambda name: name == folder.name)   # a killed export's
        tmp = Path(temp_name(folder))
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict={k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
                              safe_serialization=True)
        processor.save_pretrained(tmp)
        if record is not None:
            (tmp / "lego-tune.json").write_text(json.dumps(asdict(record), indent=1, default=str))
        replace_folder(tmp, folder)
    if dist.is_initialized():
        dist.barrier()
    return folder


__all__ = ["TuneConfig", "tune", "encode_example", "collate_examples", "answer_mask_kind", "question_seed",
           "check_curated", "freeze_vision_tower", "export"]
