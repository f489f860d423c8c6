"""DeepSpeed configuration: the user's JSON file, or one made from flags."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lego_core.errors import BadInput

log = logging.getLogger("lego.engine")

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class EngineOptions:
    micro_batch: int = 4               # per device and step
    grad_accum: int = 1
    zero_stage: int = 2
    precision: str = "auto"            # auto: bf16 on GPUs that support it, else fp32
    grad_clip: float = 1.0
    offload_optimizer: bool = False    # ZeRO optimizer states in CPU memory
    offload_params: bool = False       # ZeRO-3 only: parameters in CPU memory too
    deepspeed_config: str | None = None


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BadInput(f"--precision must be one of auto, {', '.join(PRECISIONS)}, not {precision!r}")
        return precision
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def _auto_values(node, path: str = ""):
    """Key paths ("zero_optimization.stage", "a[2].b") whose value is the string "auto"."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _auto_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _auto_values(value, f"{path}[{i}]")
    elif node == "auto":
        yield path


def _user_config(opts: EngineOptions, world_size: int | None) -> dict:
    path = Path(opts.deepspeed_config)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"cannot read DeepSpeed config {path}: {e}") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path}: a DeepSpeed config is a JSON object, not {type(config).__name__}")
    # Only values that *are* "auto" (HF's placeholders): a key such as "autotuning" or a path with
    # "auto" in it is fine.
    autos = list(_auto_values(config))
    if autos:
        more = f" (and {len(autos) - 1} more)" if len(autos) > 1 else ""
        raise BadInput(f"{path}: {autos[0]} is \"auto\"{more}, which only HF integrations fill in; write a value")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadInput(f"{path}: {key} must be an integer >= 1, not {value!r}")
    config.setdefault("train_micro_batch_size_per_gpu", opts.micro_batch)
    config.setdefault("gradient_accumulation_steps", opts.grad_accum)
    # The global batch follows from the two above and the world size, which may change between
    # runs (a resume on more GPUs); DeepSpeed would refuse a stale one, so it is dropped, with a
    # word when it disagrees with what the run will use.
    global_batch = config.pop("train_batch_size", None)
    if global_batch is not None and world_size is not None:
        used = config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world_size
        if global_batch != used:
            log.warning("%s: train_batch_size %s ignored; the batch is train_micro_batch_size_per_gpu x "
                        "gradient_accumulation_steps x %d ranks = %d", path, global_batch, world_size, used)
    return config


def deepspeed_config(opts: EngineOptions, world_size: int | None) -> dict:
    """The DeepSpeed config dict. A user file wins whole; "auto" values only work through HF
    integrations, so they are refused with a clear message rather than failing deep inside.
    `world_size` None: not known yet (a check before launch). The trainers call `engine_config`."""
    if opts.deepspeed_config:
        return _user_config(opts, world_size)
    if opts.zero_stage not in (0, 1, 2, 3):
        raise BadInput(f"--zero must be 0, 1, 2 or 3, not {opts.zero_stage}")
    precision = resolve_precision(opts.precision)
    zero: dict = {"stage": opts.zero_stage}
    if opts.offload_optimizer and opts.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if opts.offload_params:
        if opts.zero_stage != 3:
            raise BadInput(f"--offload-params needs --zero 3 (ZeRO-{opts.zero_stage} does not partition parameters)")
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if opts.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": opts.micro_batch,
        "gradient_accumulation_steps": opts.grad_accum,
        "gradient_clipping": opts.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,       # our logger reports; DeepSpeed's would repeat it
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def _offloaded(section) -> bool:
    """Whether a ZeRO offload section sends something off the GPU (DeepSpeed's default: "none")."""
    return isinstance(section, dict) and section.get("device", "none") not in (None, "none")


def engine_config(opts: EngineOptions, world_size: int) -> dict:
    """`deepspeed_config`, with `opts` brought in line with it, in place: a --deepspeed file wins
    over the flags, and the trainers' loop, DataLoader and step count read `opts`. Were they to
    keep the flags' micro batch and accumulation while DeepSpeed uses the file's, DeepSpeed would
    step the optimizer every few loop steps and checkpoints would land mid-accumulation."""
    config = deepspeed_config(opts, world_size)
    if not opts.deepspeed_config:
        return config
    zero = config.get("zero_optimization") or {}
    resolved = {
        "micro_batch": config["train_micro_batch_size_per_gpu"],
        "grad_accum": config["gradient_accumulation_steps"],
        # what the saved train/tune-config.json should say, and what `lego train` reads to let
        # DeepSpeed offload its torch optimizer
        "zero_stage": zero.get("stage", 0),
        "offload_optimizer": _offloaded(zero.get("offload_optimizer")),
        "offload_params": _offloaded(zero.get("offload_param")),
    }
    changed = {k: (getattr(opts, k), v) for k, v in resolved.items() if getattr(opts, k) != v}
    for key, value in resolved.items():
        setattr(opts, key, value)
    if changed:
        log.warning("%s wins over the flags: %s", opts.deepspeed_config,
                    ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
    return config


def plain_engine_on_one_rank(config: dict, opts: EngineOptions, world_size: int, resume=None) -> bool:
    """On one rank ZeRO-1/2 partition nothing; in fp32 they only add costs: a flat fp32 copy of the
    trainable weights (4 bytes a parameter, 3.4 GB for SD-1.5's UNet), every gradient copied into
    ZeRO's buffers during backward and flattened again for the step, and the weights copied back
    after it (together ≈ 10 % of a training step on CPU). The plain engine (stage 0) makes the same
    update: fp32 gradients, the same clipping, the same optimizer. So the flags' ZeRO-1/2 becomes
    stage 0 there, in `config` (in place; True when it did). Kept as asked: a --deepspeed file,
    several ranks, bf16/fp16 (ZeRO's mixed precision keeps and accumulates the gradients its own
    way), optimizer offload and ZeRO-3 (they save memory on one rank too), and a resume from a
    checkpoint written under ZeRO (`resume`; its optimizer state is in ZeRO's files)."""
    from pathlib import Path

    zero = config.get("zero_optimization", {})
    mixed = any(config.get(p, {}).get("enabled") for p in ("bf16", "fp16"))
    if (opts.deepspeed_config or world_size != 1 or zero.get("stage") not in (1, 2) or mixed
            or _offloaded(zero.get("offload_optimizer"))):
        return False
    if resume is not None and any(Path(resume).glob("zero_pp_rank_*")):
        return False
    log.info("one rank: ZeRO-%d has nothing to partition; the plain engine makes the same fp32 update without "
             "ZeRO's copies", zero["stage"])
    config["zero_optimization"] = {"stage": 0}
    return True


def precision_dtype(config: dict):
    import torch

    if config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32
