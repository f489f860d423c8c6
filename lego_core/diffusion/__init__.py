"""The LEGO latent diffusion model: the VLLM-embedding conditioner, the pipeline, building and
generating. Submodules import torch/diffusers; this package file imports nothing heavy: the names
below are imported on first use."""

_LAZY = {
    "LegoPipeline": "lego_core.diffusion.pipeline",
    "LegoConditioner": "lego_core.diffusion.conditioner",
    "ActionFrameGenerator": "lego_core.diffusion.generate",
    "GenerateOptions": "lego_core.diffusion.generate",
    "Request": "lego_core.diffusion.generate",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lego_core.diffusion' has no attribute {name!r}")
