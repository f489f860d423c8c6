"""The answer cache: an append-only JSON-lines file, one accepted answer per line, flushed at once.

Each line is keyed by the sample key plus a hash of the whole request (model, messages, sampling
settings), so a rerun asks only for what is missing, and a changed prompt, model or temperature
asks again instead of reusing an answer to a different question. The server's address is not part
of the hash: the same model behind another endpoint answers the same request.

A line is written (and flushed to the OS) as soon as an answer is accepted, before the sample goes
to a shard, so a killed run loses no paid answer. A line cut short by a kill is dropped (and cut off
the file) when the cache is opened again; a line that is not a valid entry (see `valid_entry`: e.g.
``"text": null`` from an edited or foreign file) is ignored with a warning, so that sample is asked
again instead of a None reaching the shard writer. The file never holds the API key or any header.

A sample whose answers all failed the checks is remembered too (a ``"rejected"`` line with the
reason), so a rerun does not pay for it again; ``--retry-rejected`` asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("lego.curate")


def valid_entry(e: Any) -> bool:
    """A usable cache entry: a dict whose key and request hash are strings and whose text is a
    non-empty string (an accepted answer is never empty: the checks reject those)."""
    return (isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("request"), str)
            and isinstance(e.get("text"), str) and bool(e["text"].strip()))


def valid_rejection(e: Any) -> bool:
    """A remembered rejection: the server answered this request, every answer failed the checks
    (paid for, so a rerun does not ask again unless --retry-rejected)."""
    return (isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("request"), str)
            and isinstance(e.get("rejected"), str) and "text" not in e)


def request_hash(request: Mapping[str, Any]) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """``get(key, hash)`` -> the cached entry (dict with ``text``) or None; ``add`` appends one."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.entries: dict[tuple[str, str], dict] = {}
        self.rejections: dict[tuple[str, str], dict] = {}
        self.bad_lines = 0
        self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # the last line was cut short by a kill: drop it so the file stays valid JSONL
            log.warning("cache %s: dropping an incomplete last line (a killed run)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                e = None
            # checked before it is stored: a bad line must be a miss, and must not replace an
            # earlier good entry for the same sample
            if valid_entry(e):
                self.entries[(e["key"], e["request"])] = e
            elif valid_rejection(e):
                self.rejections[(e["key"], e["request"])] = e
            else:
                self.bad_lines += 1
        if self.bad_lines:
            log.warning("cache %s: ignored %d unreadable or invalid line(s); those samples are asked again",
                        self.path, self.bad_lines)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, req_hash: str) -> dict | None:
        return self.entries.get((key, req_hash))

    def add(self, key: str, req_hash: str, text: str, *, model: str = "",
            usage: Mapping[str, int] | None = None) -> dict:
        entry = {"key": key, "request": req_hash, "model": model, "text": text,
                 "usage": dict(usage or {}), "time": round(time.time(), 3)}
        if not valid_entry(entry):
            # a caller's bug, not a sample's: refuse before anything reaches the file, which a
            # later run would otherwise read back as an answer
            raise ValueError(f"cache: not an answer to store for {key!r}: text={text!r:.80}")
        self._write(entry)
        self.entries[(key, req_hash)] = entry
        return entry

    def rejection(self, key: str, req_hash: str) -> dict | None:
        """The remembered rejection of this request, unless an answer was accepted since."""
        return None if (key, req_hash) in self.entries else self.rejections.get((key, req_hash))

    def add_rejection(self, key: str, req_hash: str, reason: str, detail: Any = None) -> None:
        entry = {"key": key, "request": req_hash, "rejected": reason, "detail": detail, "time": round(time.time(), 3)}
        self._write(entry)
        self.rejections[(key, req_hash)] = entry

    def _write(self, entry: dict) -> None:
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
