"""Pair generated images with their references.

A side is either a folder of images or a shard set:

- folder: every image below it (png, jpg, jpeg, webp, bmp, tif, tiff), keyed by its relative path
  without extension (``sub/a.png`` → ``sub/a``), so ``lego generate --batch``'s ``{key}.png`` outputs
  match shard keys. A ``{key}.txt`` beside a reference image is its description.
- shards: keyed by ``__key__``. The reference is ``target.jpg``, the input frame ``input.jpg``, the
  description ``enriched.txt``, else ``curated.txt``, else the label in ``meta.json``. A generated
  shard set supplies ``--generated-field`` (default: the first of generated.png, generated.jpg,
  output.png, output.jpg that any sample of the set has, chosen once for the whole set; a sample
  without it counts as missing, never falls back to its own copied target.jpg. Only a set with
  none of these fields is read from target.jpg).

Local shards are indexed once (tar headers only) and read member by member with seeks, so
nothing is held in memory and samples can be read in any order.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from dataclasses import dataclass, field

from lego_core.data import schema
from lego_core.errors import BadInput

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
GENERATED_FIELDS = ("generated.png", "generated.jpg", "output.png", "output.jpg")


class Source:
    """One side of the comparison. `image(key)` → bytes of the image being compared."""

    kind = ""
    path = ""

    def keys(self) -> set[str]:
        raise NotImplementedError

    def image(self, key: str) -> bytes:
        raise NotImplementedError

    def input_image(self, key: str) -> bytes | None:
        return None

    def has_input(self, key: str) -> bool:
        """Whether `input_image(key)` has an image (without reading it)."""
        return False

    def texts(self, key: str) -> tuple[str | None, str | None]:
        """(label, description) when known."""
        return None, None

    def close(self) -> None:
        pass


class FolderSource(Source):
    kind = "folder"

    def __init__(self, folder: str):
        self.path = folder
        self.files: dict[str, str] = {}
        dupes: list[str] = []
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for f in sorted(files):
                stem, ext = os.path.splitext(f)
                if ext.lower() not in IMAGE_EXTS or f.startswith("."):
                    continue
                full = os.path.join(root, f)
                key = os.path.relpath(os.path.join(root, stem), folder).replace(os.sep, "/")
                if key in self.files:
                    dupes.append(key)
                self.files[key] = full
        if dupes:
            raise BadInput(f"{folder}: {len(dupes)} image name(s) differ only by extension (e.g. {dupes[0]}.*); "
                           "keep one image per key")
        if not self.files:
            raise BadInput(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder")

    def keys(self) -> set[str]:
        return set(self.files)

    def image(self, key: str) -> bytes:
        with open(self.files[key], "rb") as f:
            return f.read()

    def texts(self, key: str):
        txt = os.path.splitext(self.files[key])[0] + ".txt"
        if os.path.isfile(txt):
            with open(txt, encoding="utf-8") as f:
                return None, f.read().strip() or None
        return None, None


@dataclass
class _Member:
    url: str
    offset: int
    size: int


class ShardSource(Source):
    kind = "shards"

    def __init__(self, specs, image_field: str | None, role: str, max_member_mb: float | None = None):
        from lego_core.data.shards import (
            MAX_MEMBER_MB, check_tar_end, expand_shards, is_remote, iter_tar, split_member, tar_problem, too_big_reason,
        )

        max_member_mb = max_member_mb or MAX_MEMBER_MB
        self.urls = expand_shards(specs)
        self.path = " ".join(self.urls) if len(self.urls) <= 3 else f"{self.urls[0]} ... ({len(self.urls)} shards)"
        self.members: dict[str, dict[str, _Member]] = {}
        self.loaded: dict[str, dict[str, bytes]] = {}  # remote and compressed shards are read into memory
        self.broken: list[str] = []        # "url: why" of shards that could not be read (whole or in part)
        self.too_big: list[str] = []       # "key: why" of members left unread for their size
        limit = max_member_mb * 1e6
        for url in self.urls:
            if is_remote(url):
                try:
                    for s in iter_tar(url, max_member_mb=max_member_mb):
                        if too_big_reason(s, max_member_mb):
                            self.too_big.append(f"{s['__key__']}: {too_big_reason(s, max_member_mb)}")
                        self.loaded[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
                except (tarfile.TarError, EOFError, OSError) as e:
                    self.broken.append(f"{url}: {tar_problem(e)}")
                continue
            try:
                with tarfile.open(url, mode="r:*") as tar:
                    compressed = not url.endswith(".tar")
                    for info in tar:
                        if not info.isreg():
                            continue
                        parts = split_member(info.name)        # the key scanner's rule, webdataset's
                        if parts is None:
                            continue
                        key, name = parts
                        if info.size > limit:
                            self.too_big.append(f"{key}: {name} is {info.size / 1e6:.0f} MB, over the "
                                                f"{max_member_mb:g} MB member limit (raise --max-member-mb)")
                        elif compressed:
                            if name.endswith(".npy"):
                                continue            # embeddings: never scored, and the bulk of a shard
                            data = tar.extractfile(info).read()
                            self.loaded.setdefault(key, {})[name] = data
                        else:
                            self.members.setdefault(key, {})[name] = _Member(url, info.offset_data, info.size)
                    check_tar_end(tar)
            except (tarfile.TarError, EOFError, OSError) as e:
                self.broken.append(f"{url}: {tar_problem(e)}")
        self.role = role
        self._files: dict[str, int] = {}
        fields = lambda k: (self.members.get(k) or self.loaded.get(k) or {})  # noqa: E731
        self._fields = fields
        all_keys = set(self.members) | set(self.loaded)
        # One field for the whole set; samples without it are missing on this side.
        self.image_field = image_field or (schema.TARGET if role == "reference" else _generated_field(all_keys, fields))
        self._image_field = {k: self.image_field for k in all_keys if self.image_field in fields(k)}
        if not self._image_field:
            want = image_field or (schema.TARGET if role == "reference"
                                   else " / ".join((*GENERATED_FIELDS, schema.TARGET)))
            raise BadInput(f"{self.path}: no sample has {want}" +
                           (" (pass --generated-field NAME)" if role == "generated" else ""))

    def keys(self) -> set[str]:
        return set(self._image_field)

    def _read(self, key: str, name: str) -> bytes | None:
        if key in self.loaded:
            return self.loaded[key].get(name)
        m = self.members.get(key, {}).get(name)
        if m is None:
            return None
        fd = self._files.get(m.url)
        if fd is None:
            fd = self._files[m.url] = os.open(m.url, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return _pread(fd, m.size, m.offset)  # positional read: safe from the decoding threads

    def image(self, key: str) -> bytes:
        return self._read(key, self._image_field[key])

    def input_image(self, key: str) -> bytes | None:
        return self._read(key, schema.INPUT)

    def has_input(self, key: str) -> bool:
        return schema.INPUT in self._fields(key)

    def texts(self, key: str):
        label = None
        meta = self._read(key, schema.META)
        if meta is not None:
            try:
                label = json.loads(meta).get("label")
            except (ValueError, AttributeError):
                label = None
            if not isinstance(label, str):   # a number or a list there would break the report's text
                label = None
        for name in (schema.ENRICHED, schema.CURATED):
            t = self._read(key, name)
            if t is not None and t.decode("utf-8", "replace").strip():
                return label, t.decode("utf-8", "replace").strip()
        return label, label

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def _generated_field(keys, fields) -> str:
    """The one field a generated shard set is read from. Chosen per set, not per sample: generated
    shards often keep the copied target.jpg, and a sample whose generation failed must then count
    as missing rather than be scored against its own reference."""
    present = set().union(*(fields(k) for k in keys))
    return next((f for f in GENERATED_FIELDS if f in present), schema.TARGET)


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        out = b""
        while len(out) < size:
            chunk = os.pread(fd, size - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return out
    with _SEEK_LOCK:  # no pread (Windows): serialise seek + read
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)


_SEEK_LOCK = threading.Lock()


def _has_images(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTS for f in files):
            return True
    return False


def open_source(spec, role: str, image_field: str | None = None, max_member_mb: float | None = None) -> Source:
    """A folder of images (one existing folder holding images and no shards) or a shard set
    (files, brace patterns, globs, a folder of .tar)."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise BadInput(f"no --{role} given")
    if len(specs) == 1 and os.path.isdir(specs[0]):
        folder = os.fspath(specs[0])
        has_tar = any(f.endswith((".tar", ".tar.gz", ".tgz")) for f in os.listdir(folder))
        if not has_tar or _has_images(folder):
            if has_tar:
                raise BadInput(f"{folder} holds both images and .tar shards: pass the shards as files or a pattern")
            return FolderSource(folder)
    if (len(specs) == 1 and not os.path.exists(specs[0]) and not any(c in specs[0] for c in "{*?[")
            and ":" not in specs[0]):
        raise BadInput(f"--{role}: {specs[0]} does not exist (a folder of images or shards)")
    return ShardSource(specs, image_field, role, max_member_mb)


@dataclass
class Match:
    keys: list[str]
    only_generated: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)

    def summary(self, examples: int = 3) -> dict:
        return {
            "matched": len(self.keys),
            "only_generated": {"count": len(self.only_generated), "examples": self.only_generated[:examples]},
            "only_reference": {"count": len(self.only_reference), "examples": self.only_reference[:examples]},
        }


def match(generated: Source, reference: Source) -> Match:
    """Keys on both sides (sorted); keys on one side only are listed. None in common → BadInput."""
    g, r = generated.keys(), reference.keys()
    both = sorted(g & r)
    m = Match(both, sorted(g - r), sorted(r - g))
    if not both:
        ex_g = ", ".join(sorted(g)[:2]) or "none"
        ex_r = ", ".join(sorted(r)[:2]) or "none"
        raise BadInput(f"no keys in common between --generated {generated.path} ({len(g)} images, e.g. {ex_g}) "
                       f"and --reference {reference.path} ({len(r)}, e.g. {ex_r})")
    return m
