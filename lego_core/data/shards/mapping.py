"""One-to-one stages: input shard i → output shard i, with a manifest beside the outputs.

Stages that transform shard by shard (enrich, the latent cache) resume per shard: an output shard
that exists is finished (the writer renames it into place only when complete), one that does not
is redone from its input. `ShardMap` holds that layout; the manifest records which inputs the
outputs were made from, so a rerun with other inputs is caught instead of mixing the two.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from lego_core.atomic import remove_stale_temps, write_atomic
from lego_core.data.shards.paths import (
    _shard_regex, finished_shards, format_shard, has_placeholder, is_remote, shard_pattern, sidecar,
)
from lego_core.errors import BadInput


class ShardMap:
    """Output shard i of ``out`` (a pattern or a folder) for each input shard i of ``inputs``."""

    def __init__(self, inputs: Sequence[str], out: str):
        self.inputs = list(inputs)
        self.pattern = shard_pattern(out)
        if not has_placeholder(self.pattern) and len(self.inputs) > 1:
            raise BadInput(f"--out {out} names one file but {len(self.inputs)} input shards were given: "
                           "use a pattern with %06d (one output shard per input shard)")
        self.outputs = [format_shard(self.pattern, i) for i in range(len(self.inputs))]
        clash = {os.path.abspath(p) for p in self.inputs} & {os.path.abspath(p) for p in self.outputs}
        if clash:
            raise BadInput(f"--out would overwrite an input shard ({sorted(clash)[0]}): "
                           "write to another folder or pattern")

    @property
    def folder(self) -> str:
        return os.path.dirname(self.pattern) or "."

    def sidecar(self, name: str) -> str:
        """A file beside the output shards, named after them (`paths.sidecar`)."""
        return sidecar(self.pattern, name)

    def listed_inputs(self) -> list[str]:
        """The inputs as a manifest records them: local paths absolute, URLs as given."""
        return [u if is_remote(u) else os.path.abspath(u) for u in self.inputs]

    def done(self, i: int) -> bool:
        return os.path.exists(self.outputs[i])

    def clean(self, i: int, *, any_pid: bool = False) -> list[str]:
        """Remove the temps of output ``i`` left by killed writers (``any_pid``: by anyone, for a
        caller that alone writes it). Only this shard's: tasks sharing a folder keep theirs."""
        name = os.path.basename(self.outputs[i])
        return remove_stale_temps(self.folder, lambda final: final == name, any_pid=any_pid)

    def wipe(self, *extra: str) -> list[str]:
        """Delete every output of the pattern (finished shards and temps, of any process) and the
        ``extra`` files (a manifest). Only while nobody else writes to the folder."""
        _, rx = _shard_regex(self.pattern)
        removed = list(finished_shards(self.pattern))
        for p in removed:
            os.remove(p)
        removed += remove_stale_temps(self.folder, rx.match, any_pid=True)
        for p in extra:
            if os.path.exists(p):
                os.remove(p)
                removed.append(p)
        return removed


def read_manifest(path: str) -> dict | None:
    """The JSON manifest at ``path``, or None when missing or unreadable (treated as stale)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
