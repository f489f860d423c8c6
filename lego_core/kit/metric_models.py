"""Tiny random models for the evaluation metrics, in the layouts the real ones ship in, built offline.

- `make_tiny_clip(folder)`: a CLIP folder like openai/clip-vit-large-patch14 (`CLIPModel` +
  `CLIPProcessor`: image processor and a real CLIP BPE tokenizer), for the CLIP image score and the
  text side of the BLIP score. Loaded with `CLIPModel.from_pretrained` / `CLIPProcessor.from_pretrained`.
- `make_tiny_blip(folder)`: a BLIP captioning folder like Salesforce/blip-image-captioning-base
  (`BlipForConditionalGeneration` + `BlipProcessor`: image processor and a BERT WordPiece tokenizer
  with BLIP's `[DEC]` bos token), loaded with the same `from_pretrained` calls.
- `make_tiny_fid_features(folder)`: an Inception-like CNN feature extractor (a transformers
  `ResNetModel`, pooled output = the features, plus `preprocessor_config.json`), the HF-folder
  feature extractor `lego evaluate --fid-model` accepts in place of InceptionV3.
- `make_tiny_egovlp(path)`: a tiny random EgoVLP (FrozenInTime) checkpoint saved as the authors' files are
  (`{..., 'state_dict': {'module.…': …}, 'config': <parse_config.ConfigParser>}`), for the EgoVLP scores;
  `make_tiny_distilbert_tokenizer(folder)` the matching tokenizer for the EgoVLP text score.
- `make_random_inception_weights(path)`: a torch-fidelity InceptionV3 state dict (the FID default's
  real architecture and key names) with random weights, saved like the official
  `weights-inception-2015-12-05-6726825d.pth`, so the `--fid-weights` path runs for real.

Same seed → same weights. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .tokenizers import corpus, make_clip_tokenizer, write_clip_vocab_files

BLIP_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_BOS = "[DEC]"


def tiny_clip(*, image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2,
              projection_dim: int = 32, vocab_size: int = 1000, seed: int = 0):
    """The in-memory `(CLIPModel, CLIPProcessor)` pair `make_tiny_clip` saves."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    tokenizer = make_clip_tokenizer(vocab_size=vocab_size)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16), max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=projection_dim, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 16), hidden_act="quick_gelu",
        projection_dim=projection_dim,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_tiny_clip(folder: str | Path, **kwargs) -> Path:
    """Write a tiny random CLIP folder (model + processor, safetensors); return its path.
    Keywords: see `tiny_clip` (`image_size`, `patch_size`, `hidden`, `layers`, `projection_dim`, ...)."""
    folder = Path(folder)
    model, processor = tiny_clip(**kwargs)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    write_clip_vocab_files(folder, processor.tokenizer)
    return folder


@functools.lru_cache(maxsize=2)
def _wordpiece_vocab(vocab_size: int) -> tuple[str, ...]:
    """BERT-uncased-style WordPiece vocab: specials, single characters (plain and ##), then the
    corpus' most frequent words, then BLIP's `[DEC]` bos last (as in BLIP's tokenizer, id 30522)."""
    from collections import Counter

    words = Counter(w for line in corpus() for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", line.lower()))
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = list(BLIP_SPECIAL) + chars + ["##" + c for c in chars if c.isalnum()]
    seen = set(vocab)
    for w, _ in words.most_common():
        if len(vocab) >= vocab_size - 1:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return tuple(vocab) + (BLIP_BOS,)


def tiny_blip(*, image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2,
              vocab_size: int = 600, seed: int = 0):
    """The in-memory `(BlipForConditionalGeneration, BlipProcessor)` pair `make_tiny_blip` saves."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    vocab = _wordpiece_vocab(vocab_size)
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, bos_token=BLIP_BOS,
                              model_max_length=512)
    ids = {t: i for i, t in enumerate(vocab)}
    text = BlipTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, encoder_hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 16), max_position_embeddings=64,
        bos_token_id=ids[BLIP_BOS], eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
        projection_dim=hidden,
    )
    vision = BlipVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 16), projection_dim=hidden,
    )
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = ids[BLIP_BOS], ids["[SEP]"], ids["[PAD]"]
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_tiny_blip(folder: str | Path, **kwargs) -> Path:
    """Write a tiny random BLIP captioning folder (model + processor, safetensors); return its path.
    Keywords: see `tiny_blip`."""
    folder = Path(folder)
    model, processor = tiny_blip(**kwargs)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def make_tiny_fid_features(folder: str | Path, *, image_size: int = 32, hidden_sizes=(16, 32), seed: int = 0) -> Path:
    """Write a tiny random CNN feature extractor folder (`ResNetModel`; its pooled output,
    `hidden_sizes[-1]` numbers per image, are the FID features) plus a `preprocessor_config.json`
    with the input size and normalisation; return its path."""
    import json

    import torch
    from transformers import ResNetConfig, ResNetModel

    folder = Path(folder)
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=list(hidden_sizes),
                          depths=[1] * len(hidden_sizes), layer_type="basic")
    ResNetModel(config).eval().save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "crop_pct": 1.0, "resample": 2, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_rescale": True, "rescale_factor": 1 / 255,
    }, indent=2))
    return folder


def make_random_inception_weights(path: str | Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised torch-fidelity InceptionV3 state dict (~95 MB, the same keys and
    shapes as the official FID weights) to `path`; return it."""
    from unittest import mock

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    # The class loads the official weights in __init__; skip only that step to get random ones.
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def tiny_egovlp(*, frames: int = 4, img_size: int = 32, patch_size: int = 16, dim: int = 128, depth: int = 2,
                text_dim: int = 128, text_layers: int = 1, vocab_size: int = 300, projection_dim: int = 32,
                seed: int = 0):
    """An in-memory random `EgoVLP` (lego_core.metrics.egovlp) at a tiny width/depth: the official
    architecture and key names, heads 64 wide (dims must be multiples of 64), `frames` temporal
    embeddings. Positional, temporal and CLS embeddings are random too (not zeros), so every part
    of the forward pass matters."""
    import torch

    from lego_core.metrics.egovlp.model import EgoVLP, EgoVLPConfig

    text = {"vocab_size": len(_wordpiece_vocab(vocab_size)) - 1, "dim": text_dim, "n_layers": text_layers,
            "n_heads": max(1, text_dim // 64), "hidden_dim": 2 * text_dim, "max_position_embeddings": 64}
    config = EgoVLPConfig(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                          num_heads=max(1, dim // 64), num_frames=frames, projection_dim=projection_dim, text=text)
    torch.manual_seed(seed)
    model = EgoVLP(config).eval()
    with torch.no_grad():
        for p in (model.video_model.cls_token, model.video_model.pos_embed, model.video_model.temporal_embed):
            p.normal_(0, 0.5)
    return model


def _authors_trainer_config(frames: int):
    """An object pickled like the `config` entry of EgoVLP's checkpoints: a `parse_config.ConfigParser`
    (a module that will not exist when the file is read) holding argparse and pathlib objects."""
    import argparse
    import pathlib
    import sys
    import types

    mod = types.ModuleType("parse_config")

    class ConfigParser:
        pass

    ConfigParser.__module__, ConfigParser.__qualname__ = "parse_config", "ConfigParser"
    mod.ConfigParser = ConfigParser
    sys.modules["parse_config"] = mod
    cfg = ConfigParser()
    cfg.__dict__.update({
        "args": argparse.Namespace(config="configs/pt/egoclip.json", resume=None, device=None),
        "_config": {"name": "EgoClip_4f", "arch": {"type": "FrozenInTime", "args": {
            "video_params": {"model": "SpaceTimeTransformer", "arch_config": "base_patch16_224", "num_frames": frames,
                             "pretrained": True, "time_init": "zeros"},
            "text_params": {"model": "distilbert-base-uncased", "pretrained": True, "input": "text"},
            "projection": "minimal", "load_checkpoint": ""}}},
        "_save_dir": pathlib.PurePosixPath("results/EgoClip_4f/models/0509_00"),
        "resume": None,
    })
    return cfg


def make_tiny_egovlp(path: str | Path, *, layout: str = "official", **kwargs) -> Path:
    """Save a tiny random EgoVLP checkpoint (see `tiny_egovlp`) to `path`; return it.

    layout "official": as EgoVLP's trainer saves (the files the authors publish) — `{'arch', 'epoch',
    'state_dict': {'module.' + key: tensor}, 'optimizer', 'monitor_best', 'config'}`, `config` a
    pickled `parse_config.ConfigParser` whose module is gone when the file is read. layout
    "state_dict": the bare state dict, no prefix."""
    import sys
    from collections import OrderedDict

    import numpy as np
    import torch

    model = tiny_egovlp(**kwargs)
    sd = model.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "state_dict":
        torch.save(sd, path)
        return path
    if layout != "official":
        raise ValueError(f"layout {layout!r}: want official or state_dict")
    try:
        ckpt = {
            "arch": "FrozenInTime", "epoch": 3,
            "state_dict": OrderedDict(("module." + k, v) for k, v in sd.items()),
            "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5, "params": list(range(len(sd)))}]},
            "monitor_best": np.float64(0.25),
            "config": _authors_trainer_config(model.config.num_frames),
        }
        torch.save(ckpt, path)
    finally:
        sys.modules.pop("parse_config", None)
    return path


def make_tiny_distilbert_tokenizer(folder: str | Path, *, vocab_size: int = 300) -> Path:
    """Write a DistilBERT WordPiece tokenizer folder (uncased, the kit's corpus vocabulary; ids
    match `tiny_egovlp`'s text vocabulary), loadable with `AutoTokenizer.from_pretrained`."""
    from transformers import DistilBertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab(vocab_size)[:-1]  # without BLIP's [DEC]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = DistilBertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tok.save_pretrained(folder)
    return folder
