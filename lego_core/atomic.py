"""Atomic writes, one scheme for the whole toolkit: write under a hidden temp name, then rename.

A finished file (or folder) either exists complete under its final name or not at all: a crash, an
exception or SIGKILL leaves at most a temp ``.{name}.tmp-{pid}`` beside it. The pid in the temp
name keeps two processes writing one folder apart and lets a later run tell a dead writer's temp
(`remove_stale_temps` deletes it) from a live one's (kept). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Callable, Iterator

_TEMP = re.compile(r"^\.(.+)\.tmp-(\d+)$")   # group 1: the final base name, group 2: the writer's pid


def temp_name(final: str | os.PathLike, pid: int | None = None) -> str:
    """The temp path for ``final``: hidden, in the same folder (so the rename stays on one file
    system), tagged with the writer's pid."""
    head, base = os.path.split(os.fspath(final))
    return os.path.join(head, f".{base}.tmp-{os.getpid() if pid is None else pid}")


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, owns: Callable[[str], object] = lambda name: True, *,
                       any_pid: bool = False) -> list[str]:
    """Remove the temps in ``folder`` whose final base name ``owns`` accepts and whose writer is
    dead (``any_pid``: whoever wrote them, for callers that know nobody else writes); returns the
    removed paths. Temp folders (a model being written) go too."""
    folder = os.fspath(folder) or "."
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        m = _TEMP.match(name)
        if m and owns(m.group(1)) and (any_pid or not pid_alive(int(m.group(2)))):
            path = os.path.join(folder, name)
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[str]:
    """Yield the temp path to write ``final`` through (for writers that take a path: PIL, PyAV, a
    model folder's ``save_pretrained``); renamed to ``final`` on success, removed on an exception.
    The rename replaces a file; it cannot replace a non-empty folder (see importers.output)."""
    final = os.fspath(final)
    folder = os.path.dirname(final)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temp_name(final)
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", *, fsync: bool = True, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator:
    """Open a temp file for ``final`` (text ``"w"`` or binary ``"wb"``); on success it is flushed,
    fsynced (so a power cut after the rename cannot leave an empty file) and renamed."""
    binary = "b" in mode
    with atomic_path(final) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else newline) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the finished folder ``tmp`` at ``final``: a folder already there is moved aside first
    (one rename, to ``.{name}.old-{pid}``), then removed, so a kill leaves either the old or the
    new folder at ``final``, never a mix or nothing."""
    final = os.fspath(final)
    head, base = os.path.split(final)
    old = os.path.join(head, f".{base}.old-{os.getpid()}")
    if os.path.lexists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(final: str | os.PathLike, data: str | bytes, *, fsync: bool = True) -> None:
    """Write ``data`` (text as UTF-8, newlines as given, or bytes) to ``final`` atomically."""
    with atomic_file(final, "wb", fsync=fsync) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


__all__ = ["atomic_file", "atomic_path", "pid_alive", "remove_stale_temps", "replace_folder", "temp_name",
           "write_atomic"]
