"""Shard I/O shared by every stage: find shards, write them atomically, read them back, resume.

Shards are plain WebDataset tar files (member ``{key}.{field}``). Writing, listing and sequential
reading use Python's ``tarfile`` directly, so stages that never touch torch (extract, curate,
inspect) do not pay for ``import webdataset`` (which imports torch). Only `make_dataset`, the
training pipeline, imports webdataset, inside the function.

Resume recipe for a stage writing to ``--out PATTERN``::

    done, start = prepare_output(pattern, overwrite=overwrite)
    with ShardWriter(pattern, start_index=start) as w:
        for sample in iter_samples(inputs, stats=stats):
            if sample["__key__"] in done:
                continue
            w.write(transform(sample))
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from lego_core.errors import BadInput
from lego_core.data.schema import SampleMeta, encode_npy, key_problem, validate_sample

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
# webdataset's own rule (tariterators.base_plus_ext): key = up to the first dot of the base name.
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_SKIP_META = re.compile(r"__[^/]*__($|/)")


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
        raise BadInput(f"output pattern {pattern} is a brace range: use %06d for the shard index, e.g. out/shard-%06d.tar")
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


def _temp_name(final: str, pid: int | None = None) -> str:
    head, base = os.path.split(final)
    return os.path.join(head, f".{base}.tmp-{os.getpid() if pid is None else pid}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partial(pattern: str) -> list[str]:
    """Remove temp shards left by a killed writer of ``pattern``; returns the removed paths.

    Temps of a process still running on this machine are kept, so two writers on one machine do
    not delete each other's work (give each SLURM array task its own pattern anyway)."""
    folder, rx = _shard_regex(pattern)
    if not os.path.isdir(folder):
        return []
    tmp_rx = re.compile(r"^\.(.+)\.tmp-(\d+)$")
    removed = []
    for name in sorted(os.listdir(folder)):
        m = tmp_rx.match(name)
        if m and rx.match(m.group(1)) and not _pid_alive(int(m.group(2))):
            path = os.path.join(folder, name)
            os.remove(path)
            removed.append(path)
    return removed


def prepare_output(pattern: str, *, overwrite: bool = False) -> tuple[set[str], int]:
    """Get ``--out`` ready for a (re)run: returns (keys already written, next shard index).

    Removes temps of killed runs. With ``overwrite`` the finished shards are deleted too and the
    run starts from index 0; otherwise their keys are returned so the stage can skip them."""
    clean_partial(pattern)
    done = finished_shards(pattern)
    if overwrite:
        for p in done:
            os.remove(p)
        return set(), 0
    keys = read_keys(done, output=True)
    if keys and _placeholder(pattern) is None:
        # A single-file --out can only be rewritten whole: continuing would replace the samples
        # it holds with the new ones only.
        raise BadInput(f"--out {pattern} already holds {len(keys)} sample(s) and names one file, so a rerun would "
                       "drop them: use a pattern such as out/cur-%06d.tar to continue, or --overwrite to start over")
    return keys, next_index(pattern)


# --- writing --------------------------------------------------------------------------------


def encode_value(name: str, value: Any) -> bytes:
    """Bytes for one field: bytes as-is, str as UTF-8, dict/list/SampleMeta as JSON for ``.json``,
    numpy arrays as ``.npy``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, SampleMeta):
        return value.to_json().encode("utf-8")
    if name.endswith("json") and isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
    if name.endswith("npy") and hasattr(value, "__array__"):
        return encode_npy(value)
    raise TypeError(f"cannot encode field {name!r} of type {type(value).__name__}: pass bytes, str, a dict for .json or an array for .npy")


def _tar_size(n: int) -> int:
    return 512 + (n + 511) // 512 * 512


class ShardWriter:
    """Writes samples into numbered shards, never leaving a half-written file under a final name.

    Each shard is written to ``.{name}.tmp-{pid}`` in the same folder, closed, fsynced and renamed
    to its final name, so a crash, an exception or SIGKILL leaves at most a hidden temp file
    (`clean_partial` removes it) and every ``*.tar`` present is complete.

    ``pattern`` is printf style (``out/shard-%06d.tar``) or format style (``out/shard-{i:06d}.tar``);
    a pattern with no placeholder writes one single file and ignores the limits. A shard is closed
    after ``max_samples`` samples, or before a sample that would take it past ``max_size`` bytes (a
    sample larger than that gets a shard of its own). No shard is created until a sample is
    written. Values: see `encode_value`; fields starting with ``_`` (``__url__``) are dropped, so a
    sample read from one shard can be written straight to another. Member mtimes are fixed
    (``mtime``) so the same samples give byte-identical shards.

    After closing: ``shards`` lists the finished paths in order, ``counts`` maps each to its number
    of samples, ``total`` is the number of samples written.
    """

    def __init__(
        self,
        pattern: str,
        *,
        max_samples: int = 1000,
        max_size: int = 1_000_000_000,
        start_index: int = 0,
        mtime: float = 0.0,
    ):
        if max_samples < 1 or max_size < 1:
            raise ValueError("max_samples and max_size must be positive")
        self.pattern = pattern
        self.max_samples = max_samples
        self.max_size = max_size
        self.index = start_index
        self.mtime = mtime
        self.single = _placeholder(pattern) is None
        self.shards: list[str] = []
        self.counts: dict[str, int] = {}
        self.total = 0
        self._file = None
        self._tar: tarfile.TarFile | None = None
        self._final = self._temp = None
        self._count = self._size = 0

    # context manager: a clean exit finalises, an exception discards the shard in progress
    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        self._final = format_shard(self.pattern, self.index)
        self.index += 1
        folder = os.path.dirname(self._final)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._temp = _temp_name(self._final)
        self._file = open(self._temp, "wb")
        mode = "w|gz" if self._final.endswith((".gz", ".tgz")) else "w|"
        # PAX: member names may exceed USTAR's 100 bytes (Ego4D uids make long keys).
        self._tar = tarfile.open(fileobj=self._file, mode=mode, format=tarfile.PAX_FORMAT)
        self._count = self._size = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self._final)
        self.shards.append(self._final)
        self.counts[self._final] = self._count
        log.info("wrote %s (%d samples)", self._final, self._count)
        self._tar = self._file = None

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (``__key__`` plus field name -> value)."""
        key = sample.get("__key__")
        p = key_problem(key)
        if p:
            raise ValueError(f"cannot write sample: {p}")
        members = [(k, encode_value(k, v)) for k, v in sorted(sample.items()) if not k.startswith("_")]
        if not members:
            raise ValueError(f"cannot write sample {key}: it has no fields")
        size = sum(_tar_size(len(v)) for _, v in members)
        if self._tar is not None and not self.single and (
            self._count >= self.max_samples or self._size + size > self.max_size
        ):
            self._finish()
        if self._tar is None:
            self._open()
        for name, data in members:
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            info.mtime = self.mtime
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._size += size
        self.total += 1

    def close(self) -> None:
        """Finalise the shard in progress (rename it to its final name)."""
        self._finish()

    def abort(self) -> None:
        """Discard the shard in progress; finished shards stay."""
        if self._tar is not None:
            try:
                self._tar.close()
                self._file.close()
            except Exception:
                pass
            finally:
                if os.path.exists(self._temp):
                    os.remove(self._temp)
                self._tar = self._file = None


def write_empty_shard(final: str) -> None:
    """A finished shard with no samples (every input sample was rejected), written atomically."""
    temp = _temp_name(final)
    with open(temp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w|gz" if final.endswith((".gz", ".tgz")) else "w|"):
            pass
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, final)


# --- reading --------------------------------------------------------------------------------


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
                f.write(json.dumps({"key": key, "url": url, "reason": reason, "detail": detail}, ensure_ascii=False) + "\n")

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 samples"
        parts = "; ".join(f"{n} x {r}" for r, n in self.counts.most_common())
        return f"skipped {self.total} sample{'s' if self.total != 1 else ''}: {parts}"

    def as_dict(self) -> dict:
        return {"total": self.total, "reasons": dict(self.counts), "examples": self.examples}


CORRUPT = "shard truncated or corrupt"


def _open_stream(url: str):
    if _REMOTE.match(url):
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
    with _open_stream(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        current: dict | None = None
        for info in tar:
            if not info.isreg() or _SKIP_META.match(info.name):
                continue
            m = _BASE_PLUS_EXT.match(info.name)
            if not m:
                continue
            key, name = m.group(1), m.group(2).lower()
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


def read_keys(urls: str | Sequence[str], *, output: bool = False) -> set[str]:
    """The sample keys in ``urls``, from the tar headers only (seeks over the data; no decoding).
    Used to resume (``output``: the keys of finished output shards are skipped) and to count
    inputs. Raises `BadInput` on a corrupt shard, in one line with the advice that fits."""
    keys: set[str] = set()
    for url in expand_shards(urls) if urls else []:
        try:
            if _REMOTE.match(url):
                with _open_stream(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                    names = [i.name for i in tar if i.isreg()]
            else:
                with tarfile.open(url, mode="r:*") as tar:
                    names = [i.name for i in tar if i.isreg()]
        except (tarfile.TarError, EOFError, OSError) as e:
            advice = ("delete it (a killed run never leaves one: something else damaged it) or rerun with --overwrite"
                      if output else "an input shard: re-create it, or leave it out of the inputs")
            raise BadInput(f"cannot read shard {url}: {tar_problem(e)}; {advice}") from None
        for n in names:
            m = _BASE_PLUS_EXT.match(n)
            if m and not _SKIP_META.match(n):
                keys.add(m.group(1))
    return keys


# --- the training pipeline ------------------------------------------------------------------
# Stages are module-level classes (not closures) so the pipeline pickles for DataLoader workers
# started with "spawn". They share an _Epoch so shuffles change every pass yet stay reproducible.


def _worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers): RANK/WORLD_SIZE env vars first, then
    torch.distributed when initialised (webdataset's own rule), then the DataLoader worker."""
    from webdataset.utils import pytorch_worker_info

    return pytorch_worker_info()


class _Epoch:
    """The epoch the current pass uses; each pass takes the value and advances it by one."""

    def __init__(self, epoch: int):
        self.next = epoch
        self.current = epoch

    def set(self, epoch: int) -> None:
        self.next = epoch

    def start(self) -> int:
        self.current, self.next = self.next, self.next + 1
        return self.current


class _Shards:
    """First stage: the shard URLs of this rank and worker for one pass.

    Not resampled: every rank shuffles the full list with the same (seed, epoch), then takes every
    world_size-th shard (webdataset's split_by_node), then every num_workers-th (split_by_worker):
    disjoint across ranks and workers, all shards covered, a different split each epoch.
    Resampled: an endless stream of shards drawn with replacement, seeded per (seed, epoch, rank,
    worker), so ranks with uneven shard counts never run dry (what DDP needs).
    """

    def __init__(self, urls, epoch: _Epoch, seed: int, shuffle: bool, resample: bool, by_node: bool, by_worker: bool):
        self.urls, self.epoch, self.seed = list(urls), epoch, seed
        self.shuffle, self.resample, self.by_node, self.by_worker = shuffle, resample, by_node, by_worker

    def __call__(self) -> Iterator[dict]:
        # Not a generator function: the epoch must advance now, before the later stages are built
        # (DataPipeline invokes them in order and _SampleShuffle reads the epoch when invoked).
        return self._urls(self.epoch.start())

    def _urls(self, epoch: int) -> Iterator[dict]:
        from webdataset.shardlists import split_by_node, split_by_worker

        rank, _, worker, _ = _worker_info()
        if self.resample:
            rng = random.Random(f"lego-resample-{self.seed}-{epoch}-{rank}-{worker}")
            while True:
                yield {"url": rng.choice(self.urls)}
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"lego-shards-{self.seed}-{epoch}").shuffle(urls)
        src: Iterable[dict] = ({"url": u} for u in urls)
        if self.by_node:
            src = split_by_node(src)
        if self.by_worker:
            src = split_by_worker(src)
        yield from src


class _ReadErrorHandler:
    """webdataset handler: log and count a read error, keep going (no sleep, unlike wds's)."""

    def __init__(self, stats: SkipStats | None):
        self.stats = stats

    def __call__(self, exn: Exception) -> bool:
        log.warning("shard read error, continuing: %r", exn)
        if self.stats is not None:
            self.stats.add(CORRUPT, detail=repr(exn))
        return True


class _OpenShards:
    """webdataset's url_opener, but closing each file once its samples are read (wds leaves that
    to the garbage collector, which warns about unclosed files)."""

    def __init__(self, handler: Callable[[Exception], bool]):
        self.handler = handler

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for item in src:
            url = item["url"]
            try:
                stream = _open_stream(url)
            except Exception as e:
                if self.handler(e):
                    continue
                raise
            try:
                yield {**item, "stream": stream}
            finally:
                stream.close()


class _Validate:
    def __init__(self, require: tuple[str, ...], stats: SkipStats | None):
        self.require, self.stats = require, stats

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            problems = validate_sample(sample, self.require)
            if problems:
                key, url = sample.get("__key__"), sample.get("__url__")
                log.warning("skipping %s in %s: %s", key, url, "; ".join(problems))
                if self.stats is not None:
                    self.stats.add(problems[0], key=key, url=url, detail=problems)
                continue
            yield sample


class _SampleShuffle:
    def __init__(self, bufsize: int, seed: int, epoch: _Epoch):
        self.bufsize, self.seed, self.epoch = bufsize, seed, epoch

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        from webdataset.filters import _shuffle

        rank, _, worker, _ = _worker_info()
        rng = random.Random(f"lego-samples-{self.seed}-{self.epoch.current}-{rank}-{worker}")
        return _shuffle(src, self.bufsize, min(self.bufsize, 100), rng=rng)


def make_dataset(
    urls: str | Sequence[str],
    *,
    shuffle: int = 1000,
    resample: bool = False,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    seed: int = 0,
    require: Iterable[str] = (),
    validate: bool = True,
    epoch: int = 0,
    stats: SkipStats | None = None,
):
    """The training input pipeline: a ``webdataset.DataPipeline`` (a torch IterableDataset) of raw
    samples (``__key__``, ``__url__``, field -> bytes); decode them in the trainer.

    ``shuffle`` is the sample shuffle buffer (0 = keep shard order, no shard shuffle either).
    Shards are split across ranks (RANK/WORLD_SIZE or torch.distributed) and DataLoader workers.
    Ranks with unequal sample counts make DDP hang at the end of an epoch: for multi-node training
    use ``resample=True`` (endless; bound it with ``.with_epoch(n)`` or by counting steps).
    Read errors and invalid samples are logged, counted in ``stats`` and skipped.

    Each pass over the dataset uses the current epoch and advances it; with non-persistent
    DataLoader workers the pipeline is copied into the workers, so call ``ds.set_epoch(e)`` before
    each epoch to get a new order. The same seed and epoch give the same order.
    """
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    urls = expand_shards(urls)
    handler = _ReadErrorHandler(stats)
    if split_by_node and not resample:
        rank, world, _, _ = _worker_info()
        if world > len(urls):
            raise BadInput(
                f"{len(urls)} shard(s) for {world} ranks: some ranks would get no data; "
                "write smaller shards (--max-samples) or train with resampling"
            )
    ep = _Epoch(epoch)
    stages: list[Callable] = [
        _Shards(urls, ep, seed, shuffle > 0, resample, split_by_node, split_by_worker),
        _OpenShards(handler),
        wds.pipelinefilter(tar_file_expander)(handler=handler),
        wds.pipelinefilter(group_by_keys)(handler=handler),
    ]
    if validate:
        stages.append(_Validate(tuple(require), stats))
    if shuffle > 0:
        stages.append(_SampleShuffle(shuffle, seed, ep))
    ds = wds.DataPipeline(*stages)
    ds.set_epoch = ep.set
    ds.urls = urls
    return ds
