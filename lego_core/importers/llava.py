"""`lego import vllm`: an original-layout LLaVA folder (haotian-liu/LLaVA) -> a transformers one.

The original layout (the authors' `llava-llama-2-13b-chat-forecasting-finetune/`): `config.json`
of a Llama model plus `mm_vision_tower` (the CLIP tower's hub name, e.g.
openai/clip-vit-large-patch14), `mm_hidden_size`, `mm_vision_select_layer` (-2),
`mm_vision_select_feature` ("patch": CLS dropped), `mm_projector_type` (absent = "linear" in
LLaVA v1); weights `model.*` (Llama), `lm_head.weight`, `model.mm_projector.*`; a Llama tokenizer
without an image token (the original code splices the image features in at a placeholder id).

What is written: a `LlavaForConditionalGeneration`-layout folder + `LlavaProcessor` (the tower's
`CLIPImageProcessor`, the tokenizer with `<image>` added, a chat template that renders the
conversation format the model was tuned with), loadable with `lego_core.vllm.load.load_vllm`.

The projector. LLaVA v1 projects with ONE linear layer; transformers' LLaVA has a two-layer MLP
(linear, GELU, linear), which cannot represent one linear layer exactly. So a linear projector is
kept as it is, in `LlavaLinearProjectorForConditionalGeneration` (`lego_core.vllm.linear_llava`):
transformers' class with the projector swapped for `LinearProjector`, marked by
`"projector_type": "linear"` in config.json, which `load_vllm` reads to pick the
class. ("mlp2x_gelu" projectors are transformers' own MLP.)

The added `<image>` token: its input embedding is never used (image features replace it); its
output row in `lm_head` is zero and it is listed in `generation_config.suppress_tokens`, so the
imported model generates exactly what the original did. (When the checkpoint's embedding matrix
has more rows than its tokenizer has tokens, e.g. padded to a multiple of 64, `<image>` takes the
first padding row, which no real token uses, and the padding rows are kept as they are: the
original could emit them too.)

The tokenizer. The original builds prompt ids with `tokenizer_image_token` (llava/mm_utils.py):
it splits the prompt at `<image>` and tokenizes each chunk as a fresh string, so the text after
the image starts with SentencePiece's dummy-prefix `▁` ("\\nHow" -> `▁`, `<0x0A>`, ...), with the
slow, legacy (transformers 4.31) Llama tokenizer, which also puts a `▁` before the text that
follows `</s>` / `<s>` in a multi-turn conversation. transformers 5's Llama tokenizer (legacy=False:
Metaspace prepend_scheme "first") puts no `▁` after a special token, which would make every
prompt one token off what the model was tuned and run on. So the imported tokenizer is saved
with `legacy: true` (prepend_scheme "always"): the processor's input ids equal
`tokenizer_image_token`'s for the prompts the chat templates below render.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lego_core.errors import BadInput
from lego_core.importers.llava_chat import CONVERSATIONS, IMAGE_TOKEN
from lego_core.importers.output import check_out, install, temp_folder
from lego_core.vllm.load import llava_model_class

log = logging.getLogger("lego.import")

_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
               "rope_theta", "rope_scaling", "attention_bias", "bos_token_id", "eos_token_id", "pad_token_id",
               "pretraining_tp", "mlp_bias", "head_dim")


@dataclass
class LlavaImport:
    source: str
    out: str
    projector: str                 # "linear" (our variant) or "mlp2x_gelu" (transformers' own)
    vision_tower: str
    vision_feature_layer: int
    vision_feature_select_strategy: str
    conversation: str
    image_token_id: int
    vocab_added: int
    dtype: str
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [self.out, f"  from {self.source}",
                f"  projector: {self.projector}" + (" (lego's exact single-linear variant; load it with lego "
                                                    "or LlavaLinearProjectorForConditionalGeneration)"
                                                    if self.projector == "linear" else ""),
                f"  vision tower: {self.vision_tower} (layer {self.vision_feature_layer}, "
                f"{'patch features' if self.vision_feature_select_strategy == 'default' else 'CLS + patches'})",
                f"  chat format: {self.conversation}"] + [f"  note: {n}" for n in self.notes]


def _read_weights(folder: Path, trust_pickle: bool) -> dict:
    from lego_core.importers.state_dict import read_state_dict

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise BadInput(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    state: dict = {}
    for f in files:
        part, _ = read_state_dict(f, trust_pickle=trust_pickle)
        state.update(part)
    return state


def _prefix_after_special_tokens(tokenizer) -> bool:
    """Make text that follows a special token (`<image>`, `</s>`, `<s>`) start with the dummy-prefix
    `▁`, as in LLaVA's `tokenizer_image_token` with the legacy SentencePiece tokenizer (see the module
    docstring). Returns whether the tokenizer now does so (checked on `<image>` + "\\nx")."""
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if isinstance(pre, pre_tokenizers.Metaspace) and pre.prepend_scheme == "first":
        pre.prepend_scheme = "always"
        backend.pre_tokenizer = pre
        # transformers' LlamaTokenizer rebuilds its pre-tokenizer from `legacy` when loaded: save it
        tokenizer.legacy = True
        tokenizer.init_kwargs["legacy"] = True
    after = tokenizer(IMAGE_TOKEN + "\nx", add_special_tokens=False).input_ids[1:]
    fresh = tokenizer("\nx", add_special_tokens=False).input_ids
    return after == fresh


def _source_legacy(src: Path):
    """The `legacy` flag of the source tokenizer_config.json (None when absent: legacy in transformers 4.31)."""
    try:
        return json.loads((src / "tokenizer_config.json").read_text()).get("legacy")
    except (OSError, ValueError, AttributeError):
        return None


def _tower(name: str, override) -> Path | str:
    if override is not None:
        return Path(override)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    return name


@dataclass
class _Layout:
    """How the original model is wired, read from its config.json (and the options)."""

    projector: str                 # "linear" | "mlp2x_gelu"
    strategy: str                  # transformers' vision_feature_select_strategy: "default" (patches) | "full"
    layer: int                     # the vision tower layer whose features are projected
    conversation: str              # the chat template's name (CONVERSATIONS)


def import_llava(folder: str | os.PathLike, out: str | os.PathLike, *, vision_tower: str | os.PathLike | None = None,
                 trust_pickle: bool = False, dtype: str = "float16", conversation: str | None = None,
                 overwrite: bool = False) -> LlavaImport:
    """Convert an original-layout LLaVA folder into a transformers LLaVA folder at `out`."""
    from lego_core.diffusion.build import quiet_loading

    src = Path(folder)
    cfg = _read_source_config(src)
    tower_name = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise BadInput(f"--dtype must be float32, float16 or bfloat16, not {dtype!r}")
    out = Path(out)
    check_out(out, overwrite)
    layout = _layout(src, cfg, conversation)
    notes: list[str] = []
    if cfg.get("image_aspect_ratio") == "pad":
        notes.append("the model was tuned with image_aspect_ratio=pad: run enrich with --aspect pad")
    quiet_loading()

    state = _read_llava_weights(src, trust_pickle, layout.projector)
    tower_ref = _tower(tower_name, vision_tower)
    tower, image_processor = _load_tower(src, tower_ref, state, notes)
    if int(cfg.get("mm_hidden_size", tower.config.hidden_size)) != tower.config.hidden_size:
        raise BadInput(f"{src}: mm_hidden_size {cfg.get('mm_hidden_size')} but the vision tower {tower_ref} "
                       f"has width {tower.config.hidden_size}")
    old_vocab = int(state["model.embed_tokens.weight"].shape[0])
    tokenizer, image_id = _prepare_tokenizer(src, old_vocab, notes)
    vocab = max(len(tokenizer), old_vocab)

    config = _llava_config(cfg, tower.config, tokenizer, vocab, image_id, layout)
    model = _empty_model(config)
    new = _converted_weights(state, tower, layout.projector, vocab - old_vocab)
    _load_weights(model, new, src, getattr(torch, dtype))
    model.generation_config = _generation_config(src, tokenizer, old_vocab, vocab)

    processor = _processor(image_processor, tokenizer, tower.config, layout)
    summary = LlavaImport(
        source=str(src.resolve()), out=str(out), projector=layout.projector, vision_tower=str(tower_ref),
        vision_feature_layer=layout.layer, vision_feature_select_strategy=layout.strategy,
        conversation=layout.conversation, image_token_id=int(image_id), vocab_added=int(vocab - old_vocab),
        dtype=dtype, notes=notes,
    )
    _save(model, processor, summary, out)
    return summary


def _read_source_config(src: Path) -> dict:
    """The original folder's config.json, refused (one line) when it is not an original-layout LLaVA."""
    if not (src / "config.json").is_file():
        raise BadInput(f"{src}: no config.json; expected an original LLaVA folder (haotian-liu/LLaVA layout)")
    try:
        cfg = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise BadInput(f"{src}/config.json: not valid JSON ({e})") from None
    if "text_config" in cfg and cfg.get("model_type") == "llava":
        raise BadInput(f"{src} is already a transformers LLaVA folder: use it directly with --vllm")
    if not (cfg.get("mm_vision_tower") or cfg.get("vision_tower")):
        raise BadInput(f"{src}/config.json names no mm_vision_tower: not an original-layout LLaVA folder")
    if cfg.get("mm_use_im_start_end"):
        raise BadInput(f"{src}: mm_use_im_start_end=true (image start/end tokens) is not supported")
    return cfg


def _layout(src: Path, cfg: dict, conversation: str | None) -> _Layout:
    """The projector, the vision features and the chat format; the conversation, when not given,
    from the model's name (a Llama-2 chat model or LLaVA v1's)."""
    projector = cfg.get("mm_projector_type") or "linear"
    if projector not in ("linear", "mlp2x_gelu"):
        raise BadInput(f"{src}: mm_projector_type {projector!r} is not supported (linear or mlp2x_gelu)")
    select_feature = cfg.get("mm_vision_select_feature", "patch")
    if select_feature not in ("patch", "cls_patch"):
        raise BadInput(f"{src}: mm_vision_select_feature {select_feature!r} is not supported (patch or cls_patch)")
    if conversation is None:
        named = (str(cfg.get("_name_or_path", "")) + " " + src.resolve().name).lower()
        conversation = "llava_llama_2" if "llama-2" in named or "llama_2" in named else "llava_v1"
    if conversation not in CONVERSATIONS:
        raise BadInput(f"conversation must be one of {', '.join(CONVERSATIONS)}, not {conversation!r}")
    return _Layout(projector, "default" if select_feature == "patch" else "full",
                   int(cfg.get("mm_vision_select_layer", -2)), conversation)


def _read_llava_weights(src: Path, trust_pickle: bool, projector: str) -> dict:
    """Every tensor of the checkpoint, refused when the Llama or projector weights are missing."""
    state = _read_weights(src, trust_pickle)
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        if k not in state:
            raise BadInput(f"{src}: weight {k} missing: not an original-layout LLaVA (Llama) checkpoint")
    proj_keys = (["model.mm_projector.weight", "model.mm_projector.bias"] if projector == "linear" else
                 ["model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                  "model.mm_projector.2.bias"])
    for k in proj_keys:
        if k not in state:
            raise BadInput(f"{src}: projector weight {k} missing (mm_projector_type {projector})")
    return state


def _load_tower(src: Path, tower_ref: Path | str, state: dict, notes: list[str]):
    """(CLIP vision tower, its image processor): the named tower, with the weights the LLaVA
    checkpoint saved for it when it has them."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    try:
        tower = CLIPVisionModel.from_pretrained(str(tower_ref), local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(str(tower_ref), local_files_only=True)
    except (OSError, ValueError) as e:
        raise BadInput(f"the CLIP vision tower {tower_ref} is neither a local folder nor in the Hugging Face "
                       f"cache ({str(e).splitlines()[0][:120]}); pass --vision-tower DIR") from None
    tower_state = {k[len("model.vision_tower.vision_tower."):]: v for k, v in state.items()
                   if k.startswith("model.vision_tower.vision_tower.")}
    if tower_state:   # the tower saved inside the LLaVA checkpoint wins over the named one
        _load_saved_tower(src, tower, tower_ref, tower_state)
        notes.append(f"vision tower weights taken from the LLaVA checkpoint (all {len(tower.state_dict())} tensors)")
    return tower, image_processor


def _load_saved_tower(src: Path, tower, tower_ref: Path | str, tower_state: dict) -> None:
    """Load the checkpoint's own vision-tower weights, refused unless they fit the tower exactly."""
    tower_state = {k[len("vision_model."):] if k.startswith("vision_model.") else k: v
                   for k, v in tower_state.items()}
    own = tower.state_dict()
    absent = [k for k in own if k not in tower_state]
    unknown = [k for k in tower_state if k not in own and not k.endswith("position_ids")]
    if absent or unknown:
        which = f"no {absent[0]}" if absent else f"an unknown {unknown[0]}"
        raise BadInput(f"{src}: its vision-tower weights (model.vision_tower.*) do not fit the tower "
                       f"{tower_ref}: {len(own) - len(absent)} of its {len(own)} tensors match ({which}); "
                       f"pass --vision-tower DIR with the tower the model was tuned with")
    for k, v in own.items():
        if tuple(tower_state[k].shape) != tuple(v.shape):
            raise BadInput(f"{src}: vision-tower weight {k} has shape {list(tower_state[k].shape)}, the tower "
                           f"{tower_ref} has {list(v.shape)}; pass --vision-tower DIR with the tower it was "
                           f"tuned with")
    tower.load_state_dict({k: tower_state[k] for k in own})


def _prepare_tokenizer(src: Path, old_vocab: int, notes: list[str]):
    """(tokenizer, `<image>`'s id): the source tokenizer with `<image>` added, tokenizing the text
    after a special token as the original did, padding on the left."""
    from transformers import AddedToken, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError) as e:
        raise BadInput(f"{src}: cannot load its tokenizer ({str(e).splitlines()[0][:120]})") from None
    image_is_new = IMAGE_TOKEN not in tokenizer.get_vocab()
    if image_is_new:
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = IMAGE_TOKEN
    if not _prefix_after_special_tokens(tokenizer):
        log.warning("the tokenizer (%s) cannot be made to start the text after <image> with a fresh "
                    "string's prefix: prompts may differ from LLaVA's tokenizer_image_token", type(tokenizer).__name__)
        notes.append("the text after <image> may tokenize differently from the original's tokenizer_image_token")
    elif _source_legacy(src) is False:
        notes.append("the source tokenizer says legacy=false: one-turn prompts tokenize as the original's; in "
                     "multi-turn ones a '▁' now follows '</s><s>' where transformers 4.31 put none")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_is_new and image_id < old_vocab:    # a padded embedding matrix: no real token uses that row
        notes.append(f"<image> (id {image_id}) takes a padding row of the checkpoint's {old_vocab}-row embedding "
                     f"matrix (its tokenizer has {len(tokenizer) - 1} tokens); the padding rows are kept as they are")
    return tokenizer, image_id


def _llava_config(cfg: dict, vision_config, tokenizer, vocab: int, image_id: int, layout: _Layout):
    """transformers' LlavaConfig for the model: the source's Llama settings, the tower's config."""
    from transformers import LlamaConfig, LlavaConfig

    llama = {k: cfg[k] for k in _LLAMA_KEYS if k in cfg}
    llama.update(vocab_size=vocab, tie_word_embeddings=False)
    llama.setdefault("pad_token_id", tokenizer.pad_token_id)
    n_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=LlamaConfig(**llama).to_dict(), image_token_index=image_id,
        vision_feature_layer=layout.layer, vision_feature_select_strategy=layout.strategy,
        image_seq_length=n_patches + (layout.strategy == "full"), projector_hidden_act="gelu",
        tie_word_embeddings=False, **({"projector_type": "linear"} if layout.projector == "linear" else {}),
    )


def _empty_model(config):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return llava_model_class(config)(config)


def _converted_weights(state: dict, tower, projector: str, added: int) -> dict:
    """The original's tensors under transformers' LLaVA names; `added` new vocabulary rows get
    the mean input embedding and a zero output row (the model never emits them)."""
    new: dict = {}
    for k, v in state.items():
        if k.startswith(("model.mm_projector.", "model.vision_tower.")) or k.endswith("rotary_emb.inv_freq"):
            continue
        if k == "lm_head.weight":
            new[k] = v
        elif k.startswith("model."):
            new["model.language_model." + k[len("model."):]] = v
    if projector == "linear":
        new["model.multi_modal_projector.linear.weight"] = state["model.mm_projector.weight"]
        new["model.multi_modal_projector.linear.bias"] = state["model.mm_projector.bias"]
    else:
        for i, name in ((0, "linear_1"), (2, "linear_2")):
            for p in ("weight", "bias"):
                new[f"model.multi_modal_projector.{name}.{p}"] = state[f"model.mm_projector.{i}.{p}"]
    for k, v in tower.state_dict().items():
        new["model.vision_tower." + k] = v
    if added:
        emb = new["model.language_model.embed_tokens.weight"]
        head = new["lm_head.weight"]
        new["model.language_model.embed_tokens.weight"] = torch.cat([emb, emb.float().mean(0, keepdim=True)
                                                                     .to(emb.dtype).expand(added, -1)])
        new["lm_head.weight"] = torch.cat([head, head.new_zeros(added, head.shape[1])])
    return new


def _load_weights(model, new: dict, src: Path, torch_dtype) -> None:
    """Load the converted tensors, refused (one line) unless they fit the config exactly."""
    own = model.state_dict()
    missing = [k for k in own if k not in new]
    unexpected = [k for k in new if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BadInput(f"{src}: the weights do not fit the config ({len(missing)} missing, {len(unexpected)} "
                       f"unexpected: {what})")
    for k, v in new.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise BadInput(f"{src}: {k} has shape {list(v.shape)}, the config implies {list(own[k].shape)}")
    model.load_state_dict({k: v.to(torch_dtype) for k, v in new.items()}, strict=True, assign=True)
    model.eval()


def _generation_config(src: Path, tokenizer, old_vocab: int, vocab: int):
    """The source's generation settings with the tokenizer's special ids; the added rows suppressed."""
    from transformers import GenerationConfig

    gen_kwargs = {}
    if (src / "generation_config.json").is_file():
        gen_kwargs = GenerationConfig.from_pretrained(str(src)).to_diff_dict()
    gen = GenerationConfig(**{k: v for k, v in gen_kwargs.items() if not k.startswith("transformers_version")})
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    if vocab > old_vocab:
        gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | set(range(old_vocab, vocab)))
    return gen


def _processor(image_processor, tokenizer, vision_config, layout: _Layout):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
        vision_feature_select_strategy=layout.strategy, num_additional_image_tokens=1,
        chat_template=CONVERSATIONS[layout.conversation], image_token=IMAGE_TOKEN,
    )


def _save(model, processor, summary: LlavaImport, out: Path) -> None:
    """Write the folder under a temp name and install it at `out` (see `importers.output`)."""
    tmp = temp_folder(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "import.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
