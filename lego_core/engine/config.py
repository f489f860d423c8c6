"""DeepSpeed configuration: the user's JSON file, or one made from flags."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lego_core.errors import BadInput

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


def deepspeed_config(opts: EngineOptions, world_size: int) -> dict:
    """The DeepSpeed config dict. A user file wins whole; "auto" values only work through HF
    integrations, so they are refused with a clear message rather than failing deep inside."""
    if opts.deepspeed_config:
        path = Path(opts.deepspeed_config)
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BadInput(f"cannot read DeepSpeed config {path}: {e}") from None
        if "auto" in json.dumps(config):
            raise BadInput(f"{path} has \"auto\" values, which only HF integrations fill in; write numbers")
        config.setdefault("train_micro_batch_size_per_gpu", opts.micro_batch)
        config.setdefault("gradient_accumulation_steps", opts.grad_accum)
        config.pop("train_batch_size", None)
        return config
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


def precision_dtype(config: dict):
    import torch

    if config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32
