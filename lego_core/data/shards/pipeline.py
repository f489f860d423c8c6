"""The training input pipeline (`make_dataset`): a webdataset ``DataPipeline`` over the shards,
split across ranks and DataLoader workers, shuffled reproducibly per epoch. The only shard module
that imports webdataset (and so torch), inside the functions.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Iterable, Iterator, Sequence

from lego_core.data.schema import validate_sample
from lego_core.data.shards.paths import expand_shards
from lego_core.data.shards.reader import CORRUPT, SkipStats, open_stream
from lego_core.errors import BadInput

log = logging.getLogger(__name__)

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
                stream = open_stream(url)
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
