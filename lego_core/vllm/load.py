"""Load any transformers LLaVA (`LlavaForConditionalGeneration` + its processor) from a local
folder (`save_pretrained` layout) or a hub id, on a chosen device and dtype."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lego_core.device import pick_device  # noqa: F401 - re-exported, callers use load.pick_device
from lego_core.errors import BadInput, LegoError

log = logging.getLogger("lego.vllm")

DTYPES = ("auto", "float16", "bfloat16", "float32")


def pick_dtype(dtype: str, device: str):
    """"auto" -> float16 on a GPU, float32 on the CPU; or the named torch dtype."""
    import torch

    if dtype not in DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_config(name_or_path: str | os.PathLike):
    """The `LlavaConfig` alone (cheap: no weights), with the same checks as `load_vllm`."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        _check_local(path)
    elif path.exists():
        raise BadInput(f"--vllm {name}: a file, expected a LLaVA folder or a hub id")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BadInput(f"LLaVA folder not found: {name}")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(path) if path.is_dir() else name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"cannot load the LLaVA config of {name}: {first}") from None
    if getattr(cfg, "model_type", None) != "llava":
        raise BadInput(f"{name} is not a LLaVA model (model_type {getattr(cfg, 'model_type', None)!r})")
    return cfg


def _check_local(folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise BadInput(f"{folder} is not a LLaVA folder: no config.json (expected a save_pretrained "
                       "folder of LlavaForConditionalGeneration, e.g. llava-hf/llava-1.5-13b-hf)")
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{config}: not readable JSON ({e})") from None
    if cfg.get("model_type") != "llava":
        raise BadInput(f"{folder} is not a LLaVA folder: config.json has model_type "
                       f"{cfg.get('model_type')!r}, expected 'llava' (LlavaForConditionalGeneration)")


def load_vllm(name_or_path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto", quantization_config=None):
    """(model, processor) for a LLaVA folder or hub id, the model in eval mode on `device`.

    `device`: "auto" (GPU when present), "cpu", "cuda", "cuda:1", ... `dtype`: "auto" (float16 on a
    GPU, float32 on the CPU), "float16", "bfloat16" or "float32". Raises `BadInput` (exit 2) for a
    folder that is not a LLaVA folder or a name that cannot be loaded. `quantization_config`: a
    transformers `BitsAndBytesConfig` (4/8-bit weights, CUDA only); the model is then loaded straight
    onto `device`, since quantised weights cannot be moved afterwards.
    """
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"--vllm {name}: a file, expected a LLaVA folder or a hub id")
        _check_local(path)
        name = str(path)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BadInput(f"LLaVA folder not found: {name}")

    quantized = {"quantization_config": quantization_config, "device_map": {"": device}} if quantization_config else {}
    model, processor = read_llava(name, torch_dtype, **quantized)
    try:
        if not quantization_config:
            model.to(device)
    except RuntimeError as e:
        raise LegoError(f"cannot move the LLaVA model to {device}: {e}") from None
    model.eval()
    log.debug("loaded %s (%s, %s)", name, device, torch_dtype)
    return model, processor


def read_llava(name: str, torch_dtype, **kwargs):
    """(model, processor) from ``name`` as they are saved (no device move, no eval mode): the one
    place LLaVA folders are read, for inference (`load_vllm`) and for tuning (`tune.load_base`).
    The class follows config.json (`llava_model_class`); failures are one `BadInput` line."""
    from transformers import AutoConfig, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name)
        config = AutoConfig.from_pretrained(name)
        model = llava_model_class(config).from_pretrained(name, config=config, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"cannot load the LLaVA model {name}: {first}") from None
    if getattr(processor, "image_token", None) is None or getattr(processor, "tokenizer", None) is None:
        raise BadInput(f"{name}: the processor ({type(processor).__name__}) has no image token / "
                       "tokenizer; expected a LlavaProcessor")
    return model, processor


def llava_model_class(config):
    """transformers' LlavaForConditionalGeneration, or lego's exact single-linear-projector variant for
    folders `lego import vllm` made from LLaVA v1 models (config.json: "projector_type": "linear")."""
    if getattr(config, "projector_type", None) == "linear":
        from lego_core.vllm.linear_llava import LlavaLinearProjectorForConditionalGeneration

        return LlavaLinearProjectorForConditionalGeneration
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration


def embedding_shape(model_or_config) -> tuple[int, int]:
    """(M, D): image tokens per image (rows of H_i) and the LLM width (columns of H_i and H_t), from
    a LLaVA model or its `LlavaConfig`."""
    cfg = getattr(model_or_config, "config", model_or_config)
    vision = cfg.vision_config
    if getattr(vision, "image_size", None) and getattr(vision, "patch_size", None):
        m = (vision.image_size // vision.patch_size) ** 2
        if getattr(cfg, "vision_feature_select_strategy", "default") == "full":
            m += 1  # CLS kept
    else:
        m = cfg.image_seq_length
    return int(m), int(cfg.text_config.hidden_size)
