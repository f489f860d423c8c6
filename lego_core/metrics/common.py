"""What every metric shares: the batch of matched samples, the `Metric` interface, image decoding
and loading pretrained models offline with a one-line error when they are missing."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lego_core.device import looks_local
from lego_core.errors import BadInput


def decode_image(data: bytes):
    """Bytes → RGB PIL image. Grayscale, palette, CMYK and 16-bit images become RGB; an alpha
    channel is dropped (the colour underneath is kept), as torchvision's `ImageReadMode.RGB` does."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a / (65535.0 if a.max() > 255 else 1.0) * 255.0, 0, 255).astype("uint8"))
    return im.convert("RGB")


def resize_to(im, size: tuple[int, int]):
    """`im` at `size` (width, height), bicubic (antialiased when shrinking); unchanged if already."""
    from PIL import Image

    return im if im.size == tuple(size) else im.resize(tuple(size), Image.BICUBIC)


@dataclass
class Batch:
    """Matched samples: the generated image already resized to its reference's size, all RGB.
    `inputs` (the input frames, None where a sample has none) is filled when a metric `needs_input`."""

    keys: list[str]
    generated: list[Any]  # PIL RGB
    reference: list[Any]  # PIL RGB
    inputs: list[Any] = field(default_factory=list)  # PIL RGB or None
    descriptions: list[str | None] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    _groups: list | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def size_groups(self):
        """[(indices, generated uint8 B×3×H×W, reference uint8 B×3×H×W)], one per image size
        (torch batches need one size; in practice every sample is 256×256 and there is one group)."""
        if self._groups is None:
            import numpy as np
            import torch

            by_size: dict[tuple[int, int], list[int]] = {}
            for i, im in enumerate(self.reference):
                by_size.setdefault(im.size, []).append(i)
            groups = []
            for idx in by_size.values():
                gen = torch.from_numpy(np.stack([np.asarray(self.generated[i]) for i in idx])).permute(0, 3, 1, 2)
                ref = torch.from_numpy(np.stack([np.asarray(self.reference[i]) for i in idx])).permute(0, 3, 1, 2)
                groups.append((idx, gen.contiguous(), ref.contiguous()))
            self._groups = groups
        return self._groups


class Metric:
    """One metric family. `columns` are the per-image values `update` returns (one list per column,
    aligned with the batch); `set_columns` the set-level values `finish` returns (e.g. FID);
    `text_columns` extra per-image text (e.g. BLIP captions) for the CSV and report."""

    name: str = ""
    columns: tuple[str, ...] = ()
    set_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    higher_is_better: dict[str, bool] = {}
    needs_description: bool = False
    needs_input: bool = False  # the batch must carry the input frames (Batch.inputs)

    def start(self, keys: Sequence[str]) -> None:
        """A new generated set begins (`keys`: the samples it will see)."""

    def update(self, batch: Batch) -> dict[str, list]:
        return {}

    def finish(self) -> dict[str, dict]:
        """Set-level results: column → {"value": float | None, "n": int, ...}."""
        return {}

    def settings(self) -> dict:
        return {}


def load_pretrained(cls, name: str, what: str, option: str, **kwargs):
    """`cls.from_pretrained(name, local_files_only=True)` — a local folder, or a hub id already in
    the Hugging Face cache; never downloads. Missing → `BadInput`, one line naming the model, what was
    looked for and the option that points at a local copy."""
    name = os.path.expanduser(str(name))
    if looks_local(name) and not os.path.isdir(name):
        raise BadInput(f"{what}: folder {name} does not exist; point {option} at a local copy of the model")
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        if os.path.isdir(name):
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInput(f"{what}: cannot load {name} ({reason}); point {option} at a complete model "
                           "folder") from None
        hf_home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise BadInput(
            f"{what}: '{name}' is not in the Hugging Face cache ({hf_home}) and nothing is downloaded; "
            f"run `hf download {name}` where there is network, or point {option} at a local copy"
        ) from None


def torch_cache_file(filename: str) -> str:
    """Where torch.hub keeps a downloaded checkpoint: $TORCH_HOME/hub/checkpoints/FILENAME."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def find_weights(explicit: str | None, filename: str, what: str, option: str, url: str) -> str:
    """The weights file to load: `explicit` if given (must exist), else torch.hub's cached copy.
    Missing → `BadInput` naming the file, where it was looked for and the option."""
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise BadInput(f"{what}: weights file {explicit} does not exist ({option})")
        return path
    path = torch_cache_file(filename)
    if not os.path.isfile(path):
        raise BadInput(
            f"{what}: weights {filename} not found in the torch cache ({path}); nothing is downloaded: "
            f"fetch {url} into that folder, or pass {option} FILE"
        )
    return path


def clip_text_features(model, tokenizer, texts: list[str], device: str):
    """L2-normalised CLIP text embeddings (projection output), 77 tokens max, batched."""
    import torch

    tok = tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
    out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats.float(), dim=-1)


def clip_image_features(model, pixel_values):
    import torch

    out = model.get_image_features(pixel_values=pixel_values)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats.float(), dim=-1)


class Shared:
    """Models several metrics use, loaded once (the CLIP model serves both CLIP and BLIP scores)."""

    def __init__(self):
        self._cache: dict[tuple, Any] = {}

    def get(self, key: tuple, build: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
