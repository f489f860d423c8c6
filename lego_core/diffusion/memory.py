"""Memory controls for generation: dtypes, diffusers' CPU offload, a quantised VLLM, freeing.

The options that only make sense on a CUDA GPU (fp16, offload, 4/8-bit quantisation) are checked
before anything is loaded, and on a machine without one they are one clear line (exit 2).
"""

from __future__ import annotations

import gc

from lego_core.errors import BadInput

DTYPES = ("auto", "fp32", "fp16", "bf16")
OFFLOADS = ("model", "sequential")
QUANTIZE = ("4bit", "8bit")
_TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def on_gpu(device: str) -> bool:
    return str(device).startswith("cuda")


def dtype_name(dtype: str, device: str, flag: str = "--dtype") -> str:
    """"auto" -> "float16" on a GPU, "float32" on the CPU; fp32/fp16/bf16 -> the torch name.
    fp16 on the CPU is refused: many CPU kernels lack it and the rest are slower than fp32."""
    if dtype not in DTYPES:
        raise BadInput(f"{flag} {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "float16" if on_gpu(device) else "float32"
    if dtype == "fp16" and not on_gpu(device):
        raise BadInput(f"{flag} fp16 needs a CUDA GPU; on the CPU ({device}) use fp32 or bf16")
    return _TORCH_NAMES[dtype]


def torch_dtype(dtype: str, device: str, flag: str = "--dtype"):
    import torch

    return getattr(torch, dtype_name(dtype, device, flag))


def check_offload(offload: str | None, device: str) -> None:
    """`--offload model|sequential` keeps weights in CPU memory and moves them to the GPU when used."""
    if offload in (None, "", "none"):
        return
    if offload not in OFFLOADS:
        raise BadInput(f"--offload {offload}: choose model or sequential")
    if not on_gpu(device):
        raise BadInput(f"--offload {offload} moves weights between CPU memory and a CUDA GPU; there is none here "
                       f"({device}): drop --offload")


def quantization_config(mode: str | None, device: str):
    """transformers' BitsAndBytesConfig for `--vllm-quantize 4bit|8bit` (None without it)."""
    if mode in (None, "", "none"):
        return None
    if mode not in QUANTIZE:
        raise BadInput(f"--vllm-quantize {mode}: choose 4bit or 8bit")
    if not on_gpu(device):
        raise BadInput(f"--vllm-quantize {mode} runs through bitsandbytes on a CUDA GPU; there is none here "
                       f"({device}): drop --vllm-quantize")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BadInput(f"--vllm-quantize {mode} needs bitsandbytes: pip install bitsandbytes") from None
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def place_pipeline(pipe, device: str, offload: str | None) -> None:
    """The pipeline on `device`, or kept in CPU memory with diffusers' offload hooks: "model" moves
    one whole part (text encoder, conditioner, UNet, VAE) at a time, "sequential" one layer at a time."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def release_memory() -> None:
    """Give freed tensors' memory back (the caller has dropped its references)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
