"""Reading shards: samples in order (`iter_samples`, `iter_tar`), keys and fields from the tar
headers alone (`iter_members`, `read_keys`), and the count of what was skipped (`SkipStats`).

Shards are plain WebDataset tar files (member ``{key}.{field}``). Sequential reading uses Python's
``tarfile`` directly, so stages that never touch torch (extract, curate, inspect) do not pay for
``import webdataset`` (which imports torch); only remote URLs go through ``webdataset.gopen``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Sequence

from lego_core.data.schema import validate_sample
from lego_core.data.shards.paths import expand_shards, is_remote
from lego_core.errors import BadInput

log = logging.getLogger(__name__)

# webdataset's own rule (tariterators.base_plus_ext): key = up to the first dot of the base name.
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_SKIP_META = re.compile(r"__[^/]*__($|/)")


def split_member(name: str) -> tuple[str, str] | None:
    """(sample key, field name lower-cased) of a tar member, as webdataset groups them; None for a
    member that belongs to no sample (no extension, or a ``__meta__`` entry)."""
    m = _BASE_PLUS_EXT.match(name)
    if not m or _SKIP_META.match(name):
        return None
    return m.group(1), m.group(2).lower()


def skipped_lines(skipped, rejects_file: str | None = None) -> list[str]:
    """The summary lines every stage prints about what it skipped (a Counter of reasons)."""
    if not skipped:
        return []
    lines = [f"skipped: {sum(skipped.values())} (" + ", ".join(f"{r}: {n}" for r, n in skipped.most_common()) + ")"]
    if rejects_file:
        lines.append(f"rejects: {rejects_file}")
    return lines


class SkipStats:
    """Counts skipped samples per reason; optionally appends each to a JSON-lines rejects file.

    With DataLoader workers each worker counts in its own copy; the warnings are logged anyway.
    """

    def __init__(self, rejects: str | os.PathLike | None = None, keep_examples: int = 3):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.rejects = os.fspath(rejects) if rejects is not None else None
        self.keep_examples = keep_examples

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, key: str | None = None, url: str | None = None, detail: Any = None) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if key is not None and len(ex) < self.keep_examples:
            ex.append(key)
        if self.rejects:
            with open(self.rejects, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "url": url, "reason": reason, "detail": detail}, ensure_ascii=False)
                        + "\n")

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 samples"
        parts = "; ".join(f"{n} x {r}" for r, n in self.counts.most_common())
        return f"skipped {self.total} sample{'s' if self.total != 1 else ''}: {parts}"

    def as_dict(self) -> dict:
        return {"total": self.total, "reasons": dict(self.counts), "examples": self.examples}


CORRUPT = "shard truncated or corrupt"


def open_stream(url: str):
    """A binary stream of ``url``: a local file, or a URL opened with webdataset's gopen."""
    if is_remote(url):
        from webdataset import gopen

        return gopen(url, "rb")
    return open(url, "rb")


MAX_MEMBER_MB = 64  # per tar member; real H_i are 2.6-5.9 MB, a JPEG frame well under 1 MB
TOO_BIG = "__too_big__"  # the fields of a sample left unread for being over the limit: [(name, bytes)]


def too_big_reason(sample: Mapping[str, Any], max_member_mb: float = MAX_MEMBER_MB) -> str | None:
    """Why `iter_tar` left part of ``sample`` unread (one member over the size limit), or None."""
    big = sample.get(TOO_BIG)
    if not big:
        return None
    name, size = big[0]
    return f"{name} is {size / 1e6:.0f} MB, over the {max_member_mb:g} MB member limit (raise --max-member-mb)"


def check_tar_end(tar: tarfile.TarFile) -> None:
    """Call after iterating over every member. A complete tar ends with a zero block, which stops
    tarfile's loop after reading it; running out of bytes at a header instead means the file was
    cut at a member boundary, which tarfile takes silently for the end."""
    if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the tar ends without its end-of-archive blocks (truncated)")


def iter_tar(url: str, *, max_member_mb: float = MAX_MEMBER_MB) -> Iterator[dict]:
    """Samples of one shard in order, grouped exactly as webdataset groups them (key = member name
    up to the first dot of its base name, field names lower-cased). Raises on a corrupt tar after
    yielding every sample completed before the damage; the sample in progress is dropped. A tar
    that stops at a member boundary without its end-of-archive blocks is truncated too.

    A member larger than ``max_member_mb`` is not read (a small .tar.gz can hold a huge member):
    its name and size go to the sample's ``__too_big__`` list, see `too_big_reason`."""
    limit = max_member_mb * 1e6
    with open_stream(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        current: dict | None = None
        for info in tar:
            parts = split_member(info.name) if info.isreg() else None
            if parts is None:
                continue
            key, name = parts
            data = tar.extractfile(info).read() if info.size <= limit else None
            tar.members = []  # stream mode keeps every TarInfo otherwise
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if data is None:
                current.setdefault(TOO_BIG, []).append((name, info.size))
            else:
                current[name] = data
        check_tar_end(tar)
        if current is not None:
            yield current


def iter_samples(
    urls: str | Sequence[str],
    *,
    require: Iterable[str] = (),
    validate: bool = True,
    stats: SkipStats | None = None,
    decode_images: bool = False,
    max_member_mb: float = MAX_MEMBER_MB,
) -> Iterator[dict]:
    """Every valid raw sample (``__key__``, ``__url__``, field -> bytes) of ``urls`` in shard order.

    ``urls`` go through `expand_shards`. Invalid samples (see `validate_sample`, with ``require``)
    and samples with a member over ``max_member_mb`` are skipped, logged at warning level and
    counted in ``stats`` under their first problem; a truncated or corrupt shard counts as one
    skip and reading goes on with the next shard.
    """
    require = tuple(require)
    for url in expand_shards(urls):
        it = iter_tar(url, max_member_mb=max_member_mb)
        while True:
            try:
                sample = next(it)
            except StopIteration:
                break
            except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                log.warning("skipping the rest of %s: %s (%s)", url, CORRUPT, e)
                if stats is not None:
                    stats.add(CORRUPT, key=None, url=url, detail=str(e))
                break
            big = too_big_reason(sample, max_member_mb)
            if big:
                log.warning("skipping %s in %s: %s", sample["__key__"], url, big)
                if stats is not None:
                    stats.add("member over the size limit", key=sample["__key__"], url=url, detail=big)
                continue
            if validate:
                problems = validate_sample(sample, require, decode_images=decode_images)
                if problems:
                    log.warning("skipping %s in %s: %s", sample["__key__"], url, "; ".join(problems))
                    if stats is not None:
                        stats.add(problems[0], key=sample["__key__"], url=url, detail=problems)
                    continue
            yield sample


def tar_problem(e: BaseException) -> str:
    """A tarfile error in one line: ``r:*``'s "could not be opened" lists one line per method."""
    text = str(e)
    if text.startswith("file could not be opened successfully"):
        return "not a tar file (nor a gzip/bz2/xz-compressed one)"
    return text.splitlines()[0].rstrip(":") if text else type(e).__name__


def iter_members(url: str) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, field, header) of every sample member of one shard, from the tar headers alone: local
    shards seek over the data. The one key scanner: resuming, counting and indexing use it."""
    if is_remote(url):
        with open_stream(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            infos = [i for i in tar if i.isreg()]
    else:
        with tarfile.open(url, mode="r:*") as tar:
            infos = [i for i in tar if i.isreg()]
    for info in infos:
        parts = split_member(info.name)
        if parts is not None:
            yield parts[0], parts[1], info


def read_keys(urls: str | Sequence[str], *, output: bool = False) -> set[str]:
    """The sample keys in ``urls``, from the tar headers only (seeks over the data; no decoding).
    Used to resume (``output``: the keys of finished output shards are skipped) and to count
    inputs. Raises `BadInput` on a corrupt shard, in one line with the advice that fits."""
    keys: set[str] = set()
    for url in expand_shards(urls) if urls else []:
        try:
            keys.update(key for key, _, _ in iter_members(url))
        except (tarfile.TarError, EOFError, OSError) as e:
            advice = ("delete it (a killed run never leaves one: something else damaged it) or rerun with --overwrite"
                      if output else "an input shard: re-create it, or leave it out of the inputs")
            raise BadInput(f"cannot read shard {url}: {tar_problem(e)}; {advice}") from None
    return keys
