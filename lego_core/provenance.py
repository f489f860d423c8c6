"""What an output was made from, recorded beside it, so a rerun never mixes two kinds of samples.

A stage's output is continued by rerunning the same command; that is only right when the rerun
would make the same samples. `pin_settings` writes the settings that decide what a sample
contains (model identity, question, temperature, seed, sizes, ...) into a JSON record beside the
output; a rerun onto an output that already holds samples compares them and refuses, in one line
naming what differs, unless ``--overwrite`` starts over. Settings that only change how fast or how
much (``--limit``, ``--workers``, ``--concurrency``) are left out of the record by the caller.

`model_identity` names a model by its files: a moved or copied folder is the same model, a
retrained or corrupted one is not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lego_core.errors import BadInput

CONTENT = "content"          # the key of the record that holds the content-defining settings
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".gguf", ".msgpack", ".h5")
_SAMPLES, _CHUNK = 16, 1 << 16


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a small file; for a weights file, of its size and 16 chunks of 64 KiB spread over
    it (a 26 GB model reads 1 MB: retrained or damaged weights differ in every chunk)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix.lower() not in _WEIGHTS or size <= _SAMPLES * _CHUNK:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(str(size).encode())
        for i in range(_SAMPLES):
            f.seek((size - _CHUNK) * i // (_SAMPLES - 1))
            h.update(f.read(_CHUNK))
    return "sampled:" + h.hexdigest()


def model_identity(name_or_path: str | os.PathLike | None) -> dict | None:
    """{"files": {relative path: digest}} for a local model folder (or file), {"id": name} for a
    hub id; None for None. Hidden files and folders are left out."""
    if name_or_path is None:
        return None
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.is_file():
        return {"files": {path.name: file_digest(path)}}
    if not path.is_dir():
        return {"id": os.fspath(name_or_path)}
    files = {}
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                full = Path(root) / name
                files[full.relative_to(path).as_posix()] = file_digest(full)
    return {"files": files}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(before: dict, now: dict, shown: int = 3) -> list[str]:
    """'name: then X, now Y' for each setting that differs (model files by name only)."""
    a, b = _flat(json.loads(json.dumps(before))), _flat(json.loads(json.dumps(now)))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if ".files." in key or key.endswith(".files"):
                model, _, name = key.partition(".files.")
                out.append(f"{model} (its file {name or '(all)'} differs)")
            else:
                out.append(f"{key}: then {a.get(key)!r}, now {b.get(key)!r}")
    return out[:shown] + ([f"and {len(out) - shown} more"] if len(out) > shown else [])


def read_record(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_record(path: str | os.PathLike, record: dict) -> None:
    """Atomically (temp name with the pid, then rename): two array tasks may write it at once."""
    from lego_core.atomic import write_atomic

    write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def pin_settings(record_path: str | os.PathLike, content: dict, *, out: str, overwrite: bool, has_output: bool,
                 extra: dict | None = None) -> None:
    """Check ``content`` against the record of the samples already in ``out``, then record it.

    ``content``: the settings that change what a sample contains. ``has_output``: whether ``out``
    already holds samples (with none, a changed rerun mixes nothing and just re-records).
    ``extra``: the rest of the resolved config, saved beside for audit, never compared. Raises
    `BadInput` (one line: what differs; --overwrite to start over) before anything is written."""
    before = read_record(record_path).get(CONTENT)
    if isinstance(before, dict) and has_output and not overwrite:
        diff = differences(before, content)
        if diff:
            raise BadInput(f"--out {out} holds samples made with other settings ({'; '.join(diff)}): rerun with the "
                           "same settings, write to another --out, or pass --overwrite to start over")
    write_record(record_path, {**(extra or {}), CONTENT: content})
