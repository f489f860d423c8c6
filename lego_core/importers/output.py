"""Where an importer writes its model folder: a temp folder beside ``--out``, renamed when complete.

`check_out` refuses an ``--out`` that holds anything but an earlier import (``--overwrite`` only
ever replaces what lego wrote: a folder with ``import.json``), `temp_folder` sweeps the temp
folders of killed imports and names this one's, and `install` swaps the finished folder in
without a moment when ``--out`` is missing or half-deleted.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lego_core.atomic import pid_alive, replace_folder, temp_name
from lego_core.errors import BadInput

MARK = "import.json"   # every importer writes it last into its temp folder


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder for the model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise BadInput(f"--out {out} already exists and is not empty (use --overwrite to replace it)")
    if not (out / MARK).is_file():
        raise BadInput(f"--out {out} holds files lego did not import (no {MARK}): --overwrite only replaces an "
                       "earlier import; choose another --out or empty it yourself")


def temp_folder(out: Path) -> Path:
    """This process's temp folder for ``out`` (empty), after removing those of dead imports."""
    rx = re.compile("^" + re.escape(f".{out.name}.") + r"(?:tmp|old)-(\d+)$")
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = rx.match(p.name)
            if m and p.is_dir() and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
    tmp = Path(temp_name(out))
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def install(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out``: an earlier import is moved aside first (one rename),
    then removed, so a kill leaves either the old or the new model at ``out``, never a mix."""
    replace_folder(tmp, out)
