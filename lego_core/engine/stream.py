"""The endless per-rank batch stream both trainers step through, with the exact resume position."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from lego_core.errors import LegoError


def batch_stream(dataset, loader_factory: Callable[[], Iterable], start_epoch: int = 0,
                 skip_batches: int = 0) -> Iterator[tuple[int, int, object]]:
    """Endless (epoch, batches done in the epoch, batch). Each rank loops over its own shards, so
    uneven shards never leave a rank waiting at an epoch's end; on resume the first
    `skip_batches` batches of `start_epoch` are skipped (the position a checkpoint recorded).
    `dataset` is a `make_dataset` pipeline (its `set_epoch` picks the pass's shuffle)."""
    epoch = start_epoch
    while True:
        dataset.set_epoch(epoch)
        seen = 0
        for i, batch in enumerate(loader_factory()):
            if epoch == start_epoch and i < skip_batches:
                continue
            seen += 1
            yield epoch, i + 1, batch
        if seen == 0 and not (epoch == start_epoch and skip_batches):
            raise LegoError("this rank got no training samples (all invalid?); see the warnings above")
        epoch += 1
