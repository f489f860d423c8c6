"""Where shards are: what the user typed → shard paths, and ``--out`` patterns → numbered shards.

A shard spec may be a brace pattern, a glob, a folder or a plain path (`expand_shards`); an output
pattern names numbered shards with a printf (``%06d``) or format (``{i:06d}``) placeholder
(`format_shard`). Files a stage writes beside its shards are named after them (`sidecar`).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Sequence

from lego_core.errors import BadInput

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")


def is_remote(url: str) -> bool:
    """Whether ``url`` is a URL (``pipe:``, ``s3://`` ...) rather than a local file."""
    return bool(_REMOTE.match(url))


# --- finding shards -------------------------------------------------------------------------


def _as_list(specs: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(specs, (str, os.PathLike)):
        return [os.fspath(specs)]
    return [os.fspath(s) for s in specs]


def expand_shards(specs: str | Sequence[str]) -> list[str]:
    """Turn what the user typed into an ordered list of shard paths, checking they exist.

    Each spec may be a brace pattern (``data-{000000..000009}.tar``), a glob (``data-*.tar``), a
    directory (every ``*.tar``/``*.tar.gz``/``*.tgz`` inside, sorted) or a plain path. Remote URLs
    (``pipe:...``, ``s3://...``) are brace-expanded and passed through unchecked, but only when the
    user typed them: a file found by a glob or in a folder is a file whatever its name (a file
    named ``pipe:cmd;.tar`` must never run ``cmd``), see `_as_local`. Duplicates are dropped, first
    occurrence kept. Raises `BadInput` naming the first missing path.
    """
    from braceexpand import braceexpand

    specs = _as_list(specs)
    if not specs:
        raise BadInput("no shards given: pass shard files, a brace pattern, a glob or a folder")
    out: list[str] = []
    for spec in specs:
        if _REMOTE.match(spec):
            out.extend(braceexpand(spec))
            continue
        if os.path.isdir(spec):
            found = sorted(p for suf in SHARD_SUFFIXES for p in glob.glob(os.path.join(glob.escape(spec), "*" + suf)))
            if not found:
                raise BadInput(f"no .tar shards in folder {spec}")
            out.extend(map(_as_local, found))
            continue
        for path in braceexpand(spec):
            if glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise BadInput(f"no shards match {path}: check the pattern")
                out.extend(map(_as_local, found))
            elif os.path.isfile(path):
                out.append(_as_local(path))
            else:
                raise BadInput(f"shard not found: {path} (check the path or the brace pattern)")
    return list(dict.fromkeys(out))


def _as_local(path: str) -> str:
    """A path found on disk, spelled so that no reader takes it for a URL: ``pipe:x;.tar`` found
    by the glob ``*.tar`` becomes ``./pipe:x;.tar`` (webdataset would run ``x`` otherwise)."""
    return os.path.join(".", path) if _REMOTE.match(path) else path


# --- output patterns ------------------------------------------------------------------------

_PRINTF = re.compile(r"%(0?\d*)d")
_BRACE = re.compile(r"\{(?:i|0)?(?::(0?\d*)d)?\}")


def shard_pattern(out: str) -> str:
    """The writer pattern for ``--out``: a folder (existing, or ending in ``/``) becomes
    ``folder/shard-%06d.tar``; anything else is returned unchanged."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, "shard-%06d.tar")
    return out


def _placeholder(pattern: str) -> re.Match | None:
    base = os.path.basename(pattern)
    if re.search(r"\{[^}]*\.\.[^}]*\}", base):
        # a brace range names shards to read; writing needs a placeholder for the index
        raise BadInput(f"output pattern {pattern} is a brace range: use %06d for the shard "
                       "index, e.g. out/shard-%06d.tar")
    return _PRINTF.search(base) or _BRACE.search(base)


def format_shard(pattern: str, index: int) -> str:
    """The shard path for ``index``: printf (``%06d``) or format (``{i:06d}``, ``{:06d}``) style.
    A pattern with no placeholder names one single file."""
    m = _placeholder(pattern)
    if m is None:
        return pattern
    head, base = os.path.split(pattern)
    width = m.group(1) or ""
    num = f"{index:{width}d}" if width else str(index)
    return os.path.join(head, base[: m.start()] + num + base[m.end():])


def has_placeholder(pattern: str) -> bool:
    """Whether ``pattern`` numbers its shards (else it names one single file)."""
    return _placeholder(pattern) is not None


def _shard_regex(pattern: str) -> tuple[str, re.Pattern]:
    """(folder, regex on base names with the index as group 1) for a writer pattern."""
    head, base = os.path.split(pattern)
    m = _placeholder(pattern)
    if m is None:
        return head or ".", re.compile("^" + re.escape(base) + "$")
    rx = re.escape(base[: m.start()]) + r"(\d+)" + re.escape(base[m.end():])
    return head or ".", re.compile("^" + rx + "$")


def finished_shards(pattern: str) -> list[str]:
    """Existing final shards written with ``pattern``, sorted by index (temp files never match)."""
    folder, rx = _shard_regex(pattern)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = rx.match(name)
        if m:
            found.append((int(m.group(1)) if m.groups() else 0, os.path.join(folder, name)))
    return [p for _, p in sorted(found)]


def next_index(pattern: str) -> int:
    """The index after the last finished shard (0 if none): where a resumed run starts writing."""
    folder, rx = _shard_regex(pattern)
    last = -1
    for p in finished_shards(pattern):
        m = rx.match(os.path.basename(p))
        last = max(last, int(m.group(1)) if m.groups() else 0)
    return last + 1


def sidecar(pattern: str, name: str) -> str:
    """A file beside the shards named after them: out/epic-%06d.tar -> out/epic.rejects.jsonl."""
    folder, base = os.path.split(pattern)
    stem = re.split(r"%|\{", base, maxsplit=1)[0].rstrip("-_.") or "shards"
    return os.path.join(folder, f"{stem}.{name}")
