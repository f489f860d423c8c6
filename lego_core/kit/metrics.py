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
