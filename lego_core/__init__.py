"""lego: LEGO egocentric action frame generation (Lai et al., ECCV 2024), every stage as a library.

Importing this package is cheap: each stage imports torch, diffusers or transformers itself, and
the names below are imported on first use (module `__getattr__`), so `lego --help` stays light.

    from lego_core import ActionFrameGenerator, LegoPipeline
"""

__version__ = "0.1.0"

# name -> module that defines it, imported when the name is first used
_LAZY = {
    "LegoPipeline": "lego_core.diffusion.pipeline",
    "ActionFrameGenerator": "lego_core.diffusion.generate",
    "GenerateOptions": "lego_core.diffusion.generate",
    "Request": "lego_core.diffusion.generate",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lego_core' has no attribute {name!r}")
