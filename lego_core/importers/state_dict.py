"""Reading a checkpoint file's tensors safely: `.safetensors` as is, a pickle (`.ckpt`/`.pt`)
first with `torch.load(weights_only=True)`, in full only when the caller trusts it (a pickle can
run code when it is loaded). Every way a file can be wrong is one `BadInput` line."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from lego_core.errors import BadInput

def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> tuple[dict, str]:
    """(tensor state dict, how it was loaded) of a `.ckpt`/`.pt`/`.safetensors` file.

    Raises `BadInput` with one line for: a missing file, a file that is not a checkpoint, a
    truncated or corrupt one, and a pickle that needs `trust_pickle` (it holds more than tensors).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"checkpoint not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
    if size < 9:
        raise BadInput(f"{p}: empty or truncated file ({size} bytes), not a checkpoint")
    n = int.from_bytes(head[:8], "little")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError):
            raise BadInput(f"{p}: truncated or corrupt checkpoint (its zip archive is incomplete); "
                           "download it again") from None
        kind = "zip"
    elif 0 < n < size and head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(str(p)), "safetensors"
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise BadInput(f"{p}: truncated or corrupt safetensors file ({first_line(e)})") from None
    elif head[0] == 0x80:
        kind = "legacy"
    else:
        raise BadInput(f"{p}: not a PyTorch checkpoint (.ckpt/.pt zip or pickle, or .safetensors)")

    import pickle

    how = "weights_only"
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", text)
        if not m:
            raise BadInput(f"{p}: truncated or corrupt checkpoint ({first_line(e)})") from None
        if not trust_pickle:
            raise BadInput(f"{p} holds Python objects besides tensors ({m.group(1)}); unpickling it can run "
                           "code: rerun with --trust-pickle if you trust where the file came from") from None
        how = "full pickle (--trust-pickle)"
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as e2:
            raise BadInput(f"{p}: unpickling needs the module {e2.name!r}, which is not installed") from None
        except Exception as e2:  # noqa: BLE001
            raise BadInput(f"{p}: cannot unpickle ({first_line(e2)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise BadInput(f"{p}: truncated or corrupt checkpoint ({first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise BadInput(f"{p}: no state_dict inside (expected a Lightning checkpoint or a plain state dict)")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise BadInput(f"{p}: its state_dict holds no tensors")
    return tensors, how


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
