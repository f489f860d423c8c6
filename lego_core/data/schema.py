"""The shard sample schema, written down once: one sample = one action.

Every stage reads and writes samples of this shape (see `shards/README.md` for the user-facing
description). A sample is what webdataset yields: a dict with ``__key__`` and one raw ``bytes``
value per file name (``"input.jpg"``, ``"meta.json"``, ...).

This module imports neither torch nor webdataset (nor numpy/PIL at import time) so that the CLI
and light stages can use it without paying for them.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lego_core.errors import BadInput

# --- file names inside a sample -------------------------------------------------------------
# Extensions contain no dot before the last one on purpose: webdataset splits a member name at the
# FIRST dot of its base name, so "input.latent.npy" would still work but "a.b-c" keys would not;
# we keep every name to "<word>.<ext>".
INPUT = "input.jpg"
TARGET = "target.jpg"
META = "meta.json"
CURATED = "curated.txt"
ENRICHED = "enriched.txt"
VLLM_IMG = "vllm_img.npy"
VLLM_TXT = "vllm_txt.npy"
INPUT_LATENT = "input_latent.npy"
TARGET_LATENT = "target_latent.npy"


@dataclass(frozen=True)
class FieldSpec:
    """One file of a sample: its name, how it is encoded, which stage adds it, what it holds."""

    name: str
    kind: str  # "jpg" | "json" | "txt" | "npy"
    stage: str
    required: bool
    description: str


FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec(INPUT, "jpg", "extract", True, "X: the frame just before the action (JPEG)"),
        FieldSpec(TARGET, "jpg", "extract", True, "Y: the action frame (JPEG)"),
        FieldSpec(META, "json", "extract", True, "action metadata: ids, label, times, source size, boxes"),
        FieldSpec(CURATED, "txt", "curate", False, "LLM-curated detailed action description (UTF-8)"),
        FieldSpec(ENRICHED, "txt", "enrich", False, "R: the tuned VLLM's enriched description (UTF-8)"),
        FieldSpec(VLLM_IMG, "npy", "enrich", False,
                  "H_i: VLLM image embedding, M x D float16 (projector output, CLS dropped)"),
        FieldSpec(VLLM_TXT, "npy", "enrich", False,
                  "H_t: VLLM text embedding, n x D float16 (last hidden state per generated token)"),
        FieldSpec(INPUT_LATENT, "npy", "train (cache)", False,
                  "optional cached VAE latent of X (the mode, unscaled), C x h x w"),
        FieldSpec(TARGET_LATENT, "npy", "train (cache)", False,
                  "optional cached VAE latent distribution of Y: mean and log-variance, 2C x h x w"),
    )
}

REQUIRED = tuple(name for name, f in FIELDS.items() if f.required)

# A pair made from two images the user already had (`lego extract --dataset pairs`) comes from no
# video: its meta.json says so with this `source` and names the two images instead of video times.
IMAGES_SOURCE = "images"

BOX_KINDS = ("left_hand", "right_hand", "hand", "object", "object_of_change", "tool")

# Characters that must not appear in a key: "." (webdataset splits the member name at the first dot),
# "/" and "\" (paths inside the tar), whitespace (shell pipelines, tar listings).
_BAD_KEY_CHARS = re.compile(r"[./\\\s]")


def sanitize_key_part(part: Any) -> str:
    """Replace the characters a key must not contain with ``_`` (see `make_key`)."""
    return _BAD_KEY_CHARS.sub("_", str(part))


def make_key(dataset: str, video_id: Any, action_id: Any) -> str:
    """The sample key ``{dataset}-{video_id}-{action_id}``, sanitised for webdataset.

    ``.``, ``/``, ``\\`` and whitespace become ``_``: webdataset takes everything up to the first dot
    of a member's base name as the key, so a dot inside an id would split the sample apart.
    """
    parts = [sanitize_key_part(p) for p in (dataset, video_id, action_id)]
    for name, p in zip(("dataset", "video_id", "action_id"), parts):
        if not p:
            raise BadInput(f"cannot make a sample key: {name} is empty; every action needs a "
                           "dataset, video_id and action_id")
    return "-".join(parts)


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a usable sample key, or None when it is."""
    if not isinstance(key, str) or not key:
        return "__key__ is missing or empty"
    if _BAD_KEY_CHARS.search(key):
        return "__key__ contains '.', '/', '\\' or whitespace"
    return None


# --- meta.json ------------------------------------------------------------------------------


@dataclass
class Box:
    """A hand/object box, normalised to [0,1] of the source frame: x0 <= x1, y0 <= y1."""

    kind: str
    box: tuple[float, float, float, float]
    name: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "box": [float(v) for v in self.box]}
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass
class SampleMeta:
    """The contents of ``meta.json``. Unknown keys are kept in ``extra`` and written back flat.

    ``t_input``, ``t_target`` and ``fps`` are None for a pair made from images (no video); its
    ``extra`` then holds ``source`` = "images", ``input_image`` and ``target_image``."""

    dataset: str
    video_id: str
    action_id: str
    label: str
    verb: str
    noun: str
    width: int
    height: int
    t_input: float | None = None
    t_target: float | None = None
    fps: float | None = None
    boxes: list[Box] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return make_key(self.dataset, self.video_id, self.action_id)

    def to_dict(self) -> dict:
        d = {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "action_id": self.action_id,
            "label": self.label,
            "verb": self.verb,
            "noun": self.noun,
            "width": int(self.width),
            "height": int(self.height),
            "boxes": [b.to_dict() if isinstance(b, Box) else dict(b) for b in self.boxes],
        }
        for k in ("t_input", "t_target", "fps"):
            if getattr(self, k) is not None:
                d[k] = float(getattr(self, k))
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleMeta":
        """Build from a parsed ``meta.json``; raises `BadInput` with the first problem."""
        problems = meta_problems(d)
        if problems:
            raise BadInput(problems[0])
        known = {f for f in cls.__dataclass_fields__ if f not in ("boxes", "extra")}
        return cls(
            **{k: d[k] for k in known if k in d},
            boxes=[Box(b["kind"], tuple(float(v) for v in b["box"]), b.get("name")) for b in d["boxes"]],
            extra={k: v for k, v in d.items() if k not in known and k != "boxes"},
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> "SampleMeta":
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"meta.json: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise BadInput("meta.json: not a JSON object")
        return cls.from_dict(d)


_META_STR = ("dataset", "video_id", "action_id", "label", "verb", "noun")
_META_NONEMPTY = ("dataset", "video_id", "action_id", "label")
_PAIR_IMAGES = ("input_image", "target_image")


def is_image_pair(d: Mapping[str, Any]) -> bool:
    """Whether a parsed meta.json describes a pair made from two images rather than a video."""
    return d.get("source") == IMAGES_SOURCE

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def meta_problems(d: Any) -> list[str]:
    """Problems with a parsed ``meta.json`` (empty list = valid). Messages carry no per-sample
    values so that they can be counted across a dataset."""
    if not isinstance(d, dict):
        return ["meta.json: not a JSON object"]
    out: list[str] = []
    for k in _META_STR:
        if k not in d:
            out.append(f"meta.json: {k} is missing")
        elif not isinstance(d[k], str):
            out.append(f"meta.json: {k} is not a string")
        elif k in _META_NONEMPTY and not d[k].strip():
            out.append(f"meta.json: {k} is empty")
    if is_image_pair(d):
        out.extend(_image_pair_problems(d))
    else:
        out.extend(_video_time_problems(d))
    for k in ("width", "height"):
        if k not in d:
            out.append(f"meta.json: {k} is missing")
        elif not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] <= 0:
            out.append(f"meta.json: {k} is not a positive integer")
    if "boxes" not in d:
        out.append("meta.json: boxes is missing")
    elif not isinstance(d["boxes"], list):
        out.append("meta.json: boxes is not a list")
    else:
        for b in d["boxes"]:
            p = box_problem(b)
            if p:
                out.append(p)
                break  # one box problem is enough to reject; keeps the count per sample at one
    return out


def _video_time_problems(d: Mapping[str, Any]) -> list[str]:
    """A pair from a video says where in it X and Y are: t_input <= t_target seconds at fps."""
    out = []
    for k in ("t_input", "t_target"):
        if k not in d:
            out.append(f"meta.json: {k} is missing")
        elif not _is_number(d[k]):
            out.append(f"meta.json: {k} is not a finite number (seconds)")
        elif d[k] < 0:
            out.append(f"meta.json: {k} is negative")
    if _is_number(d.get("t_input")) and _is_number(d.get("t_target")) and d["t_input"] > d["t_target"]:
        out.append("meta.json: t_input is after t_target")
    if "fps" not in d:
        out.append("meta.json: fps is missing")
    elif not _is_number(d["fps"]) or d["fps"] <= 0:
        out.append("meta.json: fps is not a positive number")
    return out


def _image_pair_problems(d: Mapping[str, Any]) -> list[str]:
    """A pair made from two images has no video times: it names the two images it came from."""
    out = []
    for k in _PAIR_IMAGES:
        if not isinstance(d.get(k), str) or not d[k].strip():
            out.append(f"meta.json: {k} is missing or empty (a pair made from images names them)")
    for k in ("t_input", "t_target", "fps"):
        if d.get(k) is not None and not _is_number(d[k]):
            out.append(f"meta.json: {k} is not a number")
    return out


def box_problem(b: Any) -> str | None:
    if not isinstance(b, dict):
        return "meta.json: a box is not an object"
    if b.get("kind") not in BOX_KINDS:
        return f"meta.json: a box has an unknown kind (want one of {', '.join(BOX_KINDS)})"
    if b.get("name") is not None and not isinstance(b["name"], str):
        return "meta.json: a box name is not a string"
    v = b.get("box")
    if not isinstance(v, list) or len(v) != 4 or not all(_is_number(x) for x in v):
        return "meta.json: a box is not [x0, y0, x1, y1] numbers"
    if not all(0.0 <= x <= 1.0 for x in v):
        return "meta.json: a box coordinate is outside [0, 1]"
    if v[0] > v[2] or v[1] > v[3]:
        return "meta.json: a box has x0 > x1 or y0 > y1"
    return None


# --- decoding helpers -----------------------------------------------------------------------


def _raw(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"expected bytes, got {type(v).__name__}")


def decode_text(v: bytes | str) -> str:
    """A ``.txt`` field as text."""
    return v if isinstance(v, str) else bytes(v).decode("utf-8")


def decode_npy(v: bytes):
    """A ``.npy`` field as a numpy array (never unpickles)."""
    import numpy as np

    return np.load(io.BytesIO(_raw(v)), allow_pickle=False)


def encode_npy(array) -> bytes:
    """A numpy array as ``.npy`` bytes."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_meta(v: bytes | str) -> SampleMeta:
    return SampleMeta.from_json(v)


# --- the validator --------------------------------------------------------------------------


def _jpeg_problem(name: str, data: bytes, decode: bool) -> str | None:
    # Cheap check: SOI marker at the start, EOI marker near the end (some encoders pad after EOI).
    # It catches truncated or non-JPEG files without decoding.
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff":
        return f"{name}: not a JPEG"
    if b"\xff\xd9" not in data[-32:]:
        return f"{name}: JPEG is truncated (no end marker)"
    if decode:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    return f"{name}: image is empty"
        except Exception:
            return f"{name}: JPEG does not decode"
    return None


def validate_sample(sample: Mapping[str, Any], require: Iterable[str] = (), *,
                    decode_images: bool = False) -> list[str]:
    """The problems with one raw sample (empty list = valid), each a short message naming the field.

    ``sample`` is a dict as webdataset yields it (``__key__`` plus raw bytes per file name).
    ``input.jpg``, ``target.jpg`` and ``meta.json`` are always required; ``require`` names extra
    fields a stage needs (e.g. ``["curated.txt"]``). Fields present are checked whether required or
    not; files the schema does not know are allowed and left alone. ``decode_images`` fully decodes
    the JPEGs (slower) instead of checking their start and end markers only.
    """
    out: list[str] = []
    key = sample.get("__key__")
    p = key_problem(key)
    if p:
        out.append(p)

    for name in dict.fromkeys((*REQUIRED, *require)):
        if name not in sample:
            out.append(f"{name} is missing")

    raw: dict[str, bytes] = {}
    for name, value in sample.items():
        if name.startswith("_"):
            continue
        try:
            raw[name] = _raw(value)
        except TypeError:
            out.append(f"{name}: not raw bytes")

    for name in (INPUT, TARGET):
        if name in raw:
            p = _jpeg_problem(name, raw[name], decode_images)
            if p:
                out.append(p)

    if META in raw:
        try:
            meta = json.loads(raw[META])
        except (ValueError, UnicodeDecodeError):
            out.append("meta.json: not valid JSON")
        else:
            mp = meta_problems(meta)
            out.extend(mp)
            if not mp and isinstance(key, str) and key_problem(key) is None:
                if key != make_key(meta["dataset"], meta["video_id"], meta["action_id"]):
                    out.append("__key__ does not match meta.json's {dataset}-{video_id}-{action_id}")

    for name in (CURATED, ENRICHED):
        if name in raw:
            try:
                text = raw[name].decode("utf-8")
            except UnicodeDecodeError:
                out.append(f"{name}: not UTF-8")
            else:
                if not text.strip():
                    out.append(f"{name}: empty")

    arrays = {}
    for name, ndim, dtypes in (
        (VLLM_IMG, 2, ("float16",)),
        (VLLM_TXT, 2, ("float16",)),
        (INPUT_LATENT, 3, ("float16", "float32")),
        (TARGET_LATENT, 3, ("float16", "float32")),
    ):
        if name not in raw:
            continue
        try:
            a = decode_npy(raw[name])
        except Exception:
            out.append(f"{name}: not a readable .npy array")
            continue
        if a.ndim != ndim or 0 in a.shape:
            out.append(f"{name}: expected a non-empty {ndim}-D array")
        elif str(a.dtype) not in dtypes:
            out.append(f"{name}: dtype is not {' or '.join(dtypes)}")
        else:
            arrays[name] = a
    if VLLM_IMG in arrays and VLLM_TXT in arrays and arrays[VLLM_IMG].shape[1] != arrays[VLLM_TXT].shape[1]:
        out.append("vllm_img.npy and vllm_txt.npy have different widths D")
    if INPUT_LATENT in arrays and TARGET_LATENT in arrays:
        (c, h, w), (ct, ht, wt) = arrays[INPUT_LATENT].shape, arrays[TARGET_LATENT].shape
        if (h, w) != (ht, wt) or ct != 2 * c:
            out.append("target_latent.npy is not 2C x h x w for a C x h x w input_latent.npy")
    return out
