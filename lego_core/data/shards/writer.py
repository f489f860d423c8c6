"""Writing shards: numbered WebDataset tars, atomically (`ShardWriter`), and resuming ``--out``.

Resume recipe for a stage writing to ``--out PATTERN``::

    done, start = prepare_output(pattern, overwrite=overwrite)
    with ShardWriter(pattern, start_index=start) as w:
        for sample in iter_samples(inputs, stats=stats):
            if sample["__key__"] in done:
                continue
            w.write(transform(sample))
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from typing import Any, Mapping

from lego_core.atomic import atomic_file, remove_stale_temps, temp_name
from lego_core.data.schema import SampleMeta, encode_npy, key_problem
from lego_core.data.shards.paths import _placeholder, _shard_regex, finished_shards, format_shard, next_index
from lego_core.data.shards.reader import read_keys
from lego_core.errors import BadInput

log = logging.getLogger(__name__)


# --- resuming -------------------------------------------------------------------------------


def clean_partial(pattern: str) -> list[str]:
    """Remove temp shards left by a killed writer of ``pattern``; returns the removed paths.

    Temps of a process still running on this machine are kept, so two writers on one machine do
    not delete each other's work (give each SLURM array task its own pattern anyway)."""
    folder, rx = _shard_regex(pattern)
    return remove_stale_temps(folder, rx.match)


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
    raise TypeError(f"cannot encode field {name!r} of type {type(value).__name__}: pass bytes, str, a dict for "
                    ".json or an array for .npy")


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
        self._temp = temp_name(self._final)
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
    with atomic_file(final, "wb") as f:
        with tarfile.open(fileobj=f, mode="w|gz" if final.endswith((".gz", ".tgz")) else "w|"):
            pass
