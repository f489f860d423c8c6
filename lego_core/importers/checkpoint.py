"""`lego import checkpoint`: the authors' CompVis/LDM diffusion checkpoint -> a LegoPipeline folder.

Their checkpoints (`ego4d_diffusion_with_vllm_feature.ckpt`, ...) are PyTorch Lightning files: a
pickle holding `state_dict` with CompVis names (see `compvis`). A pickle can run code when it is
loaded, so the file is first read with `torch.load(weights_only=True)`, which only accepts tensors
and plain containers; a file that needs more (Lightning's hyper-parameters, callbacks) is loaded in
full only with `trust_pickle=True` (`--trust-pickle`). `.safetensors` files need neither.

What is written: a diffusers folder (`LegoPipeline.save_pretrained`) with
- unet: the EMA weights when the file has them (`model_ema.*`, LitEma's dot-less names), else the
  raw ones (`ema=False` / `--no-ema` picks the raw ones); conv_in with 8 input channels (a 4-channel
  SD checkpoint is widened with zeros for the new channels, as the authors initialised theirs);
- vae, text_encoder: `first_stage_model.*`, `cond_stage_model.transformer.*`;
- conditioner: σ, μ, π from `projection_img`, `projection_txt`, `self_attn_mix` when present. In
  the authors' release these were never given to the optimizer: they are the random values they
  were initialised with. They are imported as they are, because that is the model the paper's
  numbers come from;
- tokenizer, scheduler: SD-1.5's, shipped with lego as configs (`sd15/`); the CLIP BPE vocabulary
  is built from `bpe_simple_vocab_16e6.txt.gz` (shipped inside the open_clip_torch package) or read
  from a CLIP tokenizer in the Hugging Face cache, or given with `tokenizer=`;
- import.json: what was imported, from where, and how;
- lego.json: the resolution the model was trained at and the step count to sample with (the
  authors': 256 px crops, 100 Euler-ancestral steps; `resolution=` / `steps=` for other files), the
  same record `lego train`'s export writes, so `lego generate` defaults `--size` / `--steps` to them.

The architecture (UNet/VAE/text encoder configs) is SD-1.5's unless `base` names a diffusers folder
whose configs to use instead (how the tests import their tiny models).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lego_core.errors import BadInput
from lego_core.importers.output import check_out, install, temp_folder

from . import compvis

log = logging.getLogger("lego.import")

SD15 = Path(__file__).with_name("sd15")
CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_HUB_TOKENIZERS = (("openai/clip-vit-large-patch14", None), ("runwayml/stable-diffusion-v1-5", "tokenizer"),
                       ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                       ("timbrooks/instruct-pix2pix", "tokenizer"))
# The authors' settings (configs/train_*.yaml: crop_res 256; configs/generate_*.yaml: steps 100).
AUTHORS_RESOLUTION, AUTHORS_STEPS = 256, 100
UNTRAINED_NOTE = ("the conditioner (projection_img, projection_txt, self_attn_mix) is imported as released: "
                  "in the authors' code these layers were never given to the optimizer, so they hold their "
                  "random initial values")


@dataclass
class CheckpointImport:
    """What `import_checkpoint` did (also written to OUT/import.json)."""

    source: str
    out: str
    loaded_with: str                   # "weights_only", "full pickle (--trust-pickle)", "safetensors"
    unet_weights: str                  # "ema" or "raw"
    ema_in_file: bool
    in_channels_in_file: int
    conditioner: str | None            # its conditioning, or None when the file has no conditioner
    vllm_dim: int | None
    tokenizer_from: str
    ignored_keys: int
    resolution: int = AUTHORS_RESOLUTION     # recorded in lego.json: `lego generate`'s default --size
    steps: int = AUTHORS_STEPS               # and its default --steps
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [self.out, f"  from {self.source} ({self.loaded_with})",
               f"  unet: {self.unet_weights} weights" + (" (the file has EMA weights too)"
                                                         if self.ema_in_file and self.unet_weights == "raw" else "")]
        out.append(f"  conditioner: {self.conditioner} (VLLM width {self.vllm_dim})" if self.conditioner
                   else "  conditioner: none in the file (description-only model)")
        out.append(f"  generate defaults (lego.json): {self.resolution} px, {self.steps} steps")
        out += [f"  note: {n}" for n in self.notes]
        return out


# -- reading the file -----------------------------------------------------------------------------


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
            raise BadInput(f"{p}: truncated or corrupt safetensors file ({_first_line(e)})") from None
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
            raise BadInput(f"{p}: truncated or corrupt checkpoint ({_first_line(e)})") from None
        if not trust_pickle:
            raise BadInput(f"{p} holds Python objects besides tensors ({m.group(1)}); unpickling it can run "
                           "code: rerun with --trust-pickle if you trust where the file came from") from None
        how = "full pickle (--trust-pickle)"
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as e2:
            raise BadInput(f"{p}: unpickling needs the module {e2.name!r}, which is not installed") from None
        except Exception as e2:  # noqa: BLE001
            raise BadInput(f"{p}: cannot unpickle ({_first_line(e2)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise BadInput(f"{p}: truncated or corrupt checkpoint ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise BadInput(f"{p}: no state_dict inside (expected a Lightning checkpoint or a plain state dict)")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise BadInput(f"{p}: its state_dict holds no tensors")
    return tensors, how


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# -- SD-1.5 configs, tokenizer, scheduler -----------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table, as characters in CLIP's vocabulary order."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def clip_vocab_from_bpe(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab.json and merges from OpenAI's `bpe_simple_vocab_16e6.txt.gz`, built the way
    CLIP's own SimpleTokenizer builds them: 256 byte symbols, the same with `</w>`, one token per
    merge (the first 48,894 merges), then `<|startoftext|>` and `<|endoftext|>` (49,408 tokens)."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1: 49152 - 256 - 2 + 1] if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
        raise BadInput(f"{path}: not a CLIP BPE merges file")
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def find_clip_bpe() -> Path | None:
    """open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`, without importing open_clip."""
    import importlib.util

    for name in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec and spec.origin:
            candidate = Path(spec.origin).parent / CLIP_BPE
            if candidate.is_file():
                return candidate
    return None


def write_sd15_tokenizer(folder: str | os.PathLike, source: str | os.PathLike | None = None) -> str:
    """Write SD-1.5's tokenizer folder (CLIPTokenizer, 77 tokens) into `folder`; return where its
    vocabulary came from. `source`: a CLIP BPE `.txt.gz` or a CLIP tokenizer folder; by default
    open_clip's bundled BPE file, else a CLIP tokenizer in the Hugging Face cache."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SD15 / "tokenizer" / name, folder / name)
    if source is not None and Path(source).is_dir():
        tok = CLIPTokenizer.from_pretrained(str(source))
        tok.model_max_length = 77
        tok.save_pretrained(folder)
        return str(source)
    bpe = Path(source) if source is not None else find_clip_bpe()
    if bpe is not None:
        if not bpe.is_file():
            raise BadInput(f"tokenizer source not found: {bpe}")
        vocab, merges = clip_vocab_from_bpe(bpe)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                           encoding="utf-8")
        return str(bpe)
    for repo, sub in CLIP_HUB_TOKENIZERS:
        try:
            tok = CLIPTokenizer.from_pretrained(repo, subfolder=sub or "", local_files_only=True)
        except Exception:  # noqa: BLE001 - not in the cache
            continue
        tok.model_max_length = 77
        tok.save_pretrained(folder)
        return f"{repo} (Hugging Face cache)"
    raise BadInput("no CLIP BPE vocabulary here: `pip install open_clip_torch` (it ships "
                   f"{CLIP_BPE}), or pass --tokenizer with that file or a CLIP tokenizer folder")


def load_base_tokenizer(base: str | os.PathLike, folder: Path):
    """The base's tokenizer (copied to `folder`), loaded with the class the base declares in its
    model_index.json (else the one its tokenizer_config.json names): loading a non-CLIP tokenizer
    as CLIPTokenizer would turn every prompt into unknown tokens."""
    import transformers

    declared = None
    try:
        entry = json.loads((Path(base) / "model_index.json").read_text()).get("tokenizer")
        declared = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    except (OSError, ValueError, AttributeError):
        pass
    cls = getattr(transformers, declared, None) if declared else transformers.AutoTokenizer
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise BadInput(f"{base}/model_index.json declares tokenizer class {declared!r}, which transformers "
                       "does not have: give --tokenizer with a CLIP tokenizer")
    try:
        return cls.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise BadInput(f"cannot load the tokenizer of {base} as {declared or 'declared'}: {_first_line(e)}") from None


def _base_configs(base: str | os.PathLike | None) -> dict:
    """unet / vae / text_encoder / scheduler configs: from `base` (a diffusers folder) or SD-1.5's."""
    if base is None:
        files = {"unet": SD15 / "unet_config.json", "vae": SD15 / "vae_config.json",
                 "text_encoder": SD15 / "text_encoder_config.json", "scheduler": SD15 / "scheduler_config.json"}
    else:
        b = Path(base)
        files = {"unet": b / "unet" / "config.json", "vae": b / "vae" / "config.json",
                 "text_encoder": b / "text_encoder" / "config.json",
                 "scheduler": b / "scheduler" / "scheduler_config.json"}
    out = {}
    for part, f in files.items():
        if not f.is_file():
            raise BadInput(f"--base {base}: no {part} config at {f}")
        out[part] = json.loads(f.read_text())
    return out


# -- building the models ---------------------------------------------------------------------------


def _load_part(model, expected_names: dict[str, str], state: dict, part: str, src: str, dtype,
               reshape=None) -> None:
    """Load `model` from `state` where `expected_names` maps each model key to its name in the file."""
    own = model.state_dict()
    missing = [name for k, name in expected_names.items() if name not in state]
    if missing:
        raise BadInput(f"{src}: {len(missing)} of {len(expected_names)} {part} weights missing (first: {missing[0]}); "
                       "not a checkpoint of this architecture (use --base for another one)")
    sd = {}
    for k, name in expected_names.items():
        v = state[name]
        if reshape is not None:
            v = reshape(k, v)
        if tuple(v.shape) != tuple(own[k].shape):
            raise BadInput(f"{src}: {name} has shape {list(v.shape)}, the {part} expects {list(own[k].shape)}; "
                           "not a checkpoint of this architecture (use --base for another one)")
        sd[k] = v.to(dtype)
    model.load_state_dict(sd, strict=True, assign=True)


def _empty(build):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def import_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                      ema: bool = True, base: str | os.PathLike | None = None,
                      tokenizer: str | os.PathLike | None = None, overwrite: bool = False,
                      dtype: str = "float32", resolution: int = AUTHORS_RESOLUTION,
                      steps: int = AUTHORS_STEPS) -> CheckpointImport:
    """Import a CompVis/LDM checkpoint into a LegoPipeline folder at `out` (see the module doc).
    `resolution` / `steps`: what the model was trained at and is sampled with, recorded in lego.json."""
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lego_core.diffusion.build import quiet_loading, widen_conv_in, write_model_info
    from lego_core.diffusion.conditioner import LegoConditioner
    from lego_core.diffusion.pipeline import LegoPipeline

    if dtype not in ("float32", "float16", "bfloat16"):
        raise BadInput(f"--dtype must be float32, float16 or bfloat16, not {dtype!r}")
    if resolution < 8 or resolution % 8 or steps < 1:
        raise BadInput(f"--resolution {resolution} / --steps {steps}: the resolution is a multiple of 8 "
                       "(the VAE's factor) and the steps at least 1")
    torch_dtype = getattr(torch, dtype)
    out = Path(out)
    check_out(out, overwrite)
    configs = _base_configs(base)
    quiet_loading()
    src = str(path)
    state, how = read_state_dict(path, trust_pickle=trust_pickle)
    parts = compvis.split_compvis(state)
    if not parts["unet"]:
        sample = ", ".join(sorted(state)[:3])
        raise BadInput(f"{src}: no {compvis.UNET_PREFIX}* weights (found {sample}, ...): "
                       "not a CompVis/LDM (Stable Diffusion / LEGO) checkpoint")
    for part, prefix in (("vae", compvis.VAE_PREFIX), ("text", compvis.TEXT_PREFIX)):
        if not parts[part]:
            raise BadInput(f"{src}: no {prefix}* weights: the checkpoint lacks its "
                           f"{'VAE' if part == 'vae' else 'CLIP text encoder'}")
    notes: list[str] = []

    # UNet: its input width comes from the file; everything else from the config.
    conv_in = parts["unet"].get(compvis.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.dim() != 4:
        raise BadInput(f"{src}: no 4-D {compvis.UNET_PREFIX}input_blocks.0.0.weight (the UNet's conv_in)")
    in_channels = int(conv_in.shape[1])
    if in_channels not in (4, 8):
        raise BadInput(f"{src}: the UNet takes {in_channels} input channels; expected 8 (LEGO/InstructPix2Pix) or 4 (SD)")
    unet_cfg = dict(configs["unet"], in_channels=in_channels)
    unet = _empty(lambda: UNet2DConditionModel.from_config(unet_cfg))
    names = {k: compvis.UNET_PREFIX + compvis.unet_to_compvis(k, unet.config) for k in unet.state_dict()}
    ema_names = {k: compvis.ema_name(n) for k, n in names.items()}
    ema_in_file = bool(parts["ema"])
    use_ema = ema and ema_in_file
    if use_ema:
        _load_part(unet, ema_names, parts["ema"], "UNet (EMA)", src, torch_dtype)
    else:
        _load_part(unet, names, parts["unet"], "UNet", src, torch_dtype)
    if in_channels == 4:
        widen_conv_in(unet, 8)
        notes.append("a 4-channel (SD) UNet: conv_in widened to 8 channels, the new ones zero")

    vae = _empty(lambda: AutoencoderKL.from_config(configs["vae"]))
    vae_names = {k: compvis.VAE_PREFIX + compvis.vae_to_compvis(k, vae.config) for k in vae.state_dict()}

    def vae_shape(k, v):
        return v.reshape(v.shape[0], v.shape[1]) if compvis.is_vae_attention_matrix(k) and v.dim() == 4 else v

    _load_part(vae, vae_names, parts["vae"], "VAE", src, torch_dtype, reshape=vae_shape)

    text_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "_name_or_path")}
    text_encoder = _empty(lambda: CLIPTextModel(CLIPTextConfig(**text_cfg)))
    text_state = {compvis.text_from_compvis(k): v for k, v in parts["text"].items()
                  if k.startswith(compvis.TEXT_PREFIX) and not k.endswith("position_ids")}
    own_text = text_encoder.state_dict()
    text_names = {k: compvis.text_from_compvis(k) for k in own_text if not k.endswith("position_ids")}
    if any(name not in text_state for name in text_names.values()):
        text_state = {compvis.TEXT_PREFIX + compvis.text_to_compvis(k): v for k, v in text_state.items()}
        text_names = {k: compvis.TEXT_PREFIX + compvis.text_to_compvis(name) for k, name in text_names.items()}
        _load_part(text_encoder, text_names, text_state, "text encoder", src, torch_dtype)  # raises: names missing
    sd = {}
    for k, name in text_names.items():
        v = text_state[name]
        if tuple(v.shape) != tuple(own_text[k].shape):
            raise BadInput(f"{src}: {compvis.TEXT_PREFIX}{compvis.text_to_compvis(name)} has shape {list(v.shape)}, "
                           f"the text encoder expects {list(own_text[k].shape)}; not a checkpoint of this "
                           "architecture (use --base for another one)")
        sd[k] = v.to(torch_dtype)
    for k in own_text:
        if k.endswith("position_ids"):
            sd[k] = own_text[k]
    text_encoder.load_state_dict(sd, strict=True, assign=True)
    text_encoder.eval()

    conditioner = None
    vllm_dim = None
    cond = parts["conditioner"]
    if cond:
        present = {p for p in compvis.CONDITIONER_PREFIXES if any(k.startswith(p) for k in cond)}
        if len(present) != 3:
            raise BadInput(f"{src}: only {', '.join(sorted(p.rstrip('.') for p in present))} of projection_img, "
                           "projection_txt, self_attn_mix: an incomplete LEGO conditioner")
        w = cond.get("projection_img.weight")
        if w is None or w.dim() != 2:
            raise BadInput(f"{src}: projection_img.weight missing or not 2-D")
        vllm_dim, width = int(w.shape[1]), int(w.shape[0])
        layers = 1 + max(int(m.group(1)) for k in cond if (m := re.match(r"self_attn_mix\.layers\.(\d+)\.", k)))
        ff = cond.get("self_attn_mix.layers.0.linear1.weight")
        conditioner = LegoConditioner(vllm_dim=vllm_dim, cross_attention_dim=width, conditioning="description+joint",
                                      num_layers=layers, dim_feedforward=int(ff.shape[0]) if ff is not None else 2048)
        _load_part(conditioner, {k: k for k in conditioner.state_dict()}, cond, "conditioner", src, torch_dtype)
        conditioner.eval()
        if width != unet.config.cross_attention_dim:
            raise BadInput(f"{src}: the conditioner projects to {width}, the UNet cross-attends to "
                           f"{unet.config.cross_attention_dim}")
        notes.append(UNTRAINED_NOTE)

    scheduler = EulerAncestralDiscreteScheduler.from_config(configs["scheduler"])
    tmp = temp_folder(out)
    try:
        if base is not None and tokenizer is None and (Path(base) / "tokenizer").is_dir():
            shutil.copytree(Path(base) / "tokenizer", tmp / "tokenizer")
            tokenizer_from = str(Path(base) / "tokenizer")
            tok = load_base_tokenizer(base, tmp / "tokenizer")
        else:
            tokenizer_from = write_sd15_tokenizer(tmp / "tokenizer", tokenizer)
            tok = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"))
        if len(tok) != text_encoder.config.vocab_size:
            raise BadInput(f"the tokenizer from {tokenizer_from} has {len(tok)} tokens, the text encoder "
                           f"{text_encoder.config.vocab_size}")
        unet.eval()
        vae.eval()
        pipe = LegoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                            conditioner=conditioner)
        pipe.save_pretrained(tmp, safe_serialization=True)
        summary = CheckpointImport(
            source=os.path.abspath(src), out=str(out), loaded_with=how, unet_weights="ema" if use_ema else "raw",
            ema_in_file=ema_in_file, in_channels_in_file=in_channels,
            conditioner=conditioner.config.conditioning if conditioner is not None else None, vllm_dim=vllm_dim,
            tokenizer_from=tokenizer_from, ignored_keys=len(parts["other"]), resolution=resolution, steps=steps,
            notes=notes,
        )
        (tmp / "import.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        write_model_info(tmp, resolution=resolution, validation_steps=steps,
                         conditioning=conditioner.config.conditioning if conditioner is not None else "description",
                         imported_from=os.path.abspath(src))
        install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if ema and not ema_in_file:
        log.info("%s has no EMA weights (model_ema.*): imported the raw UNet weights", src)
    return summary
