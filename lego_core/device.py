"""Where a model runs and where it comes from: shared by every stage that loads one."""

from __future__ import annotations

from pathlib import Path

from lego_core.errors import BadInput


def pick_device(device: str | None = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is passed through."""
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: no CUDA GPU is visible here (use --device cpu)")
    return str(device)


def looks_local(name: str | Path) -> bool:
    """A path on disk rather than a hub id ("org/name")."""
    text = str(name)
    return Path(text).exists() or Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
