"""The shard API every stage uses: find shards, write them atomically, read them back, resume.

- `paths`: what the user typed → shard paths (`expand_shards`), ``--out`` patterns
  (`shard_pattern`, `format_shard`, `finished_shards`), files beside the shards (`sidecar`).
- `writer`: `ShardWriter` (temp name, renamed when complete) and `prepare_output` (resume).
- `reader`: samples in order (`iter_samples`), keys from the tar headers (`iter_members`,
  `read_keys`), skip counting (`SkipStats`).
- `mapping`: one-to-one stages, input shard i → output shard i (`ShardMap`).
- `pipeline`: the training input pipeline (`make_dataset`, webdataset).

Importing this package is cheap: webdataset (and torch) only load inside `make_dataset`.
"""

from lego_core.data.shards.mapping import ShardMap, read_manifest, write_manifest
from lego_core.data.shards.paths import (
    SHARD_SUFFIXES, expand_shards, finished_shards, format_shard, has_placeholder, is_remote, next_index,
    shard_pattern, sidecar,
)
from lego_core.data.shards.pipeline import make_dataset
from lego_core.data.shards.reader import (
    CORRUPT, MAX_MEMBER_MB, TOO_BIG, SkipStats, check_tar_end, iter_members, iter_samples, iter_tar, open_stream,
    read_keys, skipped_lines, split_member, tar_problem, too_big_reason,
)
from lego_core.data.shards.writer import ShardWriter, clean_partial, encode_value, prepare_output, write_empty_shard

__all__ = [
    "CORRUPT", "MAX_MEMBER_MB", "SHARD_SUFFIXES", "TOO_BIG", "ShardMap", "ShardWriter", "SkipStats", "check_tar_end",
    "clean_partial", "encode_value", "expand_shards", "finished_shards", "format_shard", "has_placeholder",
    "is_remote", "iter_members", "iter_samples", "iter_tar", "make_dataset", "next_index", "open_stream",
    "prepare_output", "read_keys", "read_manifest", "shard_pattern", "sidecar", "skipped_lines", "split_member",
    "tar_problem", "too_big_reason", "write_empty_shard", "write_manifest",
]
