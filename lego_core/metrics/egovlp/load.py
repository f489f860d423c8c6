"""Loading EgoVLP checkpoints: the official files as the authors publish them, read safely, unwrapped
and loaded with strict key matching.

The official files (EgoVLP's trainer) are `torch.save({'arch', 'epoch', 'state_dict', 'optimizer',
'monitor_best', 'config'})` of a DistributedDataParallel model: the weights are under `state_dict`
with a `module.` prefix, and `config` is a pickled `parse_config.ConfigParser` (with argparse and
pathlib objects inside). That object would need EgoVLP's code to unpickle, and unpickling arbitrary
objects runs arbitrary code, so the file is read with torch's weights-only unpickler, every
non-tensor class it names stood in for by an inert placeholder: nothing from the file is executed,
and only `state_dict` is used. A bare state dict (with or without `module.`) loads too.

Strict: after unwrapping, the keys must be exactly the model's — the one tolerance is
`text_model.embeddings.position_ids`, a constant buffer some transformers versions saved (dropped).
The temporal embedding is adapted to the number of frames wanted as the authors' loader does
(FrozenInTime._inflate_positional_embeds, load_temporal_fix="zeros"): frames beyond the checkpoint's
get zero embeddings; fewer frames use the first ones (the forward pass slices them).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict

from lego_core.errors import BadInput

log = logging.getLogger(__name__)

# Where the authors publish the checkpoints (EgoVLP's README; LEGO ships both in its metric bundle).
OFFICIAL = {
    "egovlp.pth": ("Ego4D, 4 frames",
                   "EgoVLP_PT_BEST, https://drive.google.com/file/d/1-cP3Gcg0NGDcMZalgJ_615BQdbFIbcj7"),
    "epic_mir_plus.pth": ("EPIC-KITCHENS, 16 frames",
                          "EgoVLP_FT_EPIC+, https://drive.google.com/file/d/1-SOQeXc-xSn544sJzgFLhC95hkQsm0BR"),
}
PUBLISHED = ("github.com/showlab/EgoVLP (README, Pretrained Weights / EPIC-Kitchens MIR) or LEGO's "
             "scripts/download_metric_weights.sh (metric_pretrained.zip, github.com/BolinLai/LEGO)")
IGNORED_KEYS = ("text_model.embeddings.position_ids",)


def where_published(filename: str) -> str:
    if filename in OFFICIAL:
        what, url = OFFICIAL[filename]
        return f"the authors publish {filename} ({what}) as {url} and in {PUBLISHED}"
    return (f"the authors publish egovlp.pth (Ego4D) and epic_mir_plus.pth (EPIC-KITCHENS) in {PUBLISHED}")


def _placeholder(fullname: str):
    """An inert class named like `fullname` that swallows construction and state."""
    module, _, name = fullname.rpartition(".")

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.__dict__["_args"] = args

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    cls = type(name.rsplit(".", 1)[-1], (), {"__new__": __new__, "__init__": __init__, "__setstate__": __setstate__,
                                              "__reduce__": None})
    cls.__module__, cls.__qualname__ = module, name
    return cls


def read_checkpoint(path: str) -> dict:
    """The file's raw object (tensors on the CPU), unpickled weights-only with placeholders for any
    other class it names."""
    import torch

    path = os.fspath(path)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format): plain weights-only load below
        unsafe = []
    stubs = [_placeholder(g) for g in unsafe]
    kwargs = {"map_location": "cpu", "weights_only": True}
    try:
        with torch.serialization.safe_globals(stubs):
            try:  # memory-mapped: the official files also hold the optimizer state (~2 GB), never needed
                return torch.load(path, mmap=True, **kwargs)
            except Exception:  # noqa: BLE001 - e.g. a legacy (non-zip) file: read it whole
                return torch.load(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"EgoVLP: cannot read checkpoint {path} ({reason[:200]})") from None


def unwrap(obj, path: str = "checkpoint") -> "OrderedDict":
    """The FrozenInTime state dict inside a checkpoint object: `obj['state_dict']` (or `obj['model']`,
    or `obj` itself), with the DataParallel `module.` prefix removed."""
    import torch

    sd = obj
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "module"):
            if isinstance(obj.get(k), dict):
                sd = obj[k]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInput(f"EgoVLP: {path} holds no state dict (expected a dict of tensors, or one under 'state_dict')")
    keys = list(sd)
    if all(k.startswith("module.") for k in keys):
        sd = OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return OrderedDict(sd)


def adapt_temporal_embed(sd: dict, frames: int | None) -> dict:
    """Zero-extend `video_model.temporal_embed` to `frames` when the checkpoint has fewer (the
    authors' 'zeros' fix); with more, they are kept and the model uses the first `frames`."""
    import torch

    key = "video_model.temporal_embed"
    if frames is None or key not in sd or sd[key].shape[1] >= frames:
        return sd
    old = sd[key]
    log.warning("EgoVLP: the checkpoint has temporal embeddings for %d frames, %d wanted; the extra ones are zero "
                "(as the authors' loader does)", old.shape[1], frames)
    new = torch.zeros(old.shape[0], frames, old.shape[2], dtype=old.dtype)
    new[:, : old.shape[1]] = old
    return {**sd, key: new}


def load_state_dict_strict(model, sd: dict, path: str = "checkpoint") -> None:
    """`model.load_state_dict(sd, strict=True)`, failures as one line naming the file and keys."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k in IGNORED_KEYS and k not in own)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise BadInput(f"EgoVLP: {path} is not an EgoVLP (FrozenInTime) checkpoint: keys {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def load_egovlp(path: str, frames: int | None = None, device: str = "cpu", text: bool = True):
    """An `EgoVLP` model in eval mode with the checkpoint's weights, its architecture read off the
    checkpoint (the official ones: ViT-B/16 at 224 px, DistilBERT-base, 256-d). `frames`: the clip
    length it will be fed (temporal embeddings zero-extended if the checkpoint has fewer). `text`:
    keep the text branch (its weights are always checked; dropped after loading when False)."""

    from .model import EgoVLP, EgoVLPConfig

    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise BadInput(f"EgoVLP: checkpoint {path} does not exist; {where_published(os.path.basename(path))}")
    sd = unwrap(read_checkpoint(path), path)
    sd = adapt_temporal_embed(sd, frames)
    try:
        config = EgoVLPConfig.from_state_dict(sd)
    except KeyError as e:
        raise BadInput(f"EgoVLP: {path} is not an EgoVLP (FrozenInTime) checkpoint: no {e.args[0]}") from None
    if config.embed_dim % 64 or (config.text and config.text["dim"] % 64):
        raise BadInput(f"EgoVLP: {path}: widths {config.embed_dim} / {config.text and config.text['dim']} are not "
                       "multiples of the 64-wide heads of ViT-B and DistilBERT")
    model = EgoVLP(config)  # built on the CPU: meta + to_empty would leave non-persistent buffers unset
    load_state_dict_strict(model, sd, path)
    if not text and config.text is not None:
        del model.text_model, model.txt_proj
        model.config.text = None
    return model.eval().requires_grad_(False).to(device)


def official_keys(frames: int = 16) -> dict[str, list[int]]:
    """Key → shape of the official checkpoints' state dict (without `module.`), computed here from
    our model at the authors' configuration (see tests/data/egovlp_official_keys.json for the same
    list derived from showlab/EgoVLP's code)."""
    import torch

    from .model import EgoVLP, EgoVLPConfig

    with torch.device("meta"):
        model = EgoVLP(EgoVLPConfig(num_frames=frames))
    return {k: list(v.shape) for k, v in model.state_dict().items() if not re.search(r"position_ids$", k)}
