"""SD-1.5's configs, tokenizer and scheduler for an imported checkpoint: shipped with lego as
configs (`sd15/`), or a base diffusers folder's; the CLIP BPE vocabulary is built from
`bpe_simple_vocab_16e6.txt.gz` (open_clip_torch ships it) or read from a CLIP tokenizer in the
Hugging Face cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lego_core.errors import BadInput
from lego_core.importers.state_dict import first_line

SD15 = Path(__file__).with_name("sd15")
CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_HUB_TOKENIZERS = (("openai/clip-vit-large-patch14", None), ("runwayml/stable-diffusion-v1-5", "tokenizer"),
                       ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                       ("timbrooks/instruct-pix2pix", "tokenizer"))


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
        raise BadInput(f"cannot load the tokenizer of {base} as {declared or 'declared'}: {first_line(e)}") from None


def base_configs(base: str | os.PathLike | None) -> dict:
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
