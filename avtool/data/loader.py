"""The data loader factory: worker processes, pinned memory, a per-batch timeout and a seeded
distributed sampler whose epoch travels with every index.

The training loop must call ``set_epoch(loader, epoch)`` (or ``loader.sampler.set_epoch``) before
each epoch, as with any DistributedSampler: it reshuffles, and the datasets seed sample i of epoch e
from (seed, e, i).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from avtool.data.base import ClipDataset
from avtool.errors import AvtoolError


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 64
    """Clips per batch on this process (the paper: 256 per GPU for ViT-B pretraining)."""
    workers: int = 8
    """Data-loader worker processes on this process (each decodes single-threaded)."""
    pin_memory: bool = True
    """Page-locked batches for asynchronous copies to the GPU (ignored without CUDA)."""
    persistent_workers: bool = True
    """Keep workers (and their decoders and chunk index) alive across epochs."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead."""
    timeout: float = 300.0
    """Seconds to wait for one batch before failing instead of hanging (0 waits forever)."""
    shuffle: bool = True
    drop_last: bool = True
    """Drop the last incomplete batch (training); keep it for evaluation."""
    seed: int = 0
    """Seed of the shuffle (the same on every rank, as DistributedSampler requires)."""
    start_method: Literal["fork", "spawn", "forkserver"] | None = None
    """How workers start; None: the platform's default, but ``spawn`` when the dataset decodes on
    NVDEC (CUDA does not work in a process forked from one that already uses it)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0 or self.prefetch_factor < 1 or self.timeout < 0:
            raise AvtoolError(
                "loader needs batch_size >= 1, workers >= 0, prefetch_factor >= 1 and timeout >= 0, got "
                f"{self.batch_size}, {self.workers}, {self.prefetch_factor}, {self.timeout}"
            )


class EpochSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, index)``, so a worker knows the epoch of each sample.

    ``set_epoch(epoch, skip=n)`` starts the epoch's order at its n-th sample on this rank: a run resumed
    in the middle of an epoch sees exactly the samples the interrupted run had not reached, without
    loading (and decoding) the ones it had. ``set_epoch(epoch, until=last)`` makes one pass run on
    through epoch ``last - 1``: a training loop that iterates the loader once for the whole run keeps its
    workers' prefetch going across epoch boundaries instead of waiting, at every epoch start, for each
    worker's first whole batch (the reference's "multi-epochs loader"). With ``whole=B`` every epoch
    yields a multiple of B samples, so that batches never straddle two epochs."""

    skip: int = 0
    until: int | None = None
    whole: int = 1

    def set_epoch(self, epoch: int, skip: int = 0, until: int | None = None) -> None:
        super().set_epoch(epoch)
        self.skip = skip
        self.until = until

    def _per_epoch(self) -> int:
        return super().__len__() // self.whole * self.whole

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first, skip = self.epoch, self.skip
        for epoch in range(first, max(first + 1, self.until or 0)):
            # DistributedSampler shuffles with seed + self.epoch.
            self.epoch = epoch
            order = itertools.islice(super().__iter__(), skip, self._per_epoch())
            yield from ((epoch, index) for index in order)
            skip = 0
        self.epoch = first

    def __len__(self) -> int:
        epochs = max(1, (self.until or 0) - self.epoch)
        return max(0, epochs * self._per_epoch() - self.skip)


def world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_worker(worker_id: int) -> None:
    # Workers decode single-threaded; torch's resize in decode-then-crop must not oversubscribe cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    config: LoaderConfig,
    rank: int | None = None,
    world_size: int | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` for this rank; ``loader.sampler`` is the EpochSampler. ``collate_fn``
    runs in the workers (e.g. tokenisation of the batch's texts)."""
    if rank is None or world_size is None:
        rank, world_size = world()
    sampler = EpochSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=config.shuffle, seed=config.seed,
        drop_last=config.drop_last,
    )  # fmt: skip
    if config.drop_last:
        sampler.whole = config.batch_size
    workers = config.workers
    start_method = config.start_method
    if start_method is None and isinstance(dataset, ClipDataset) and dataset.clips.decoder.backend == "pyav-nvdec":
        start_method = "spawn"
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=config.pin_memory and torch.cuda.is_available(),
        drop_last=config.drop_last,
        persistent_workers=config.persistent_workers and workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        timeout=config.timeout if workers > 0 else 0,
        worker_init_fn=_init_worker,
        collate_fn=collate_fn,
        multiprocessing_context=start_method if workers > 0 else None,
    )


def set_epoch(loader: DataLoader, epoch: int, skip: int = 0, until: int | None = None) -> None:
    """Reshuffle for ``epoch`` and make the datasets draw that epoch's frames, crops and texts; ``skip``
    starts at this rank's ``skip``-th sample of the epoch (resuming mid-epoch); ``until`` runs one pass
    on through epoch ``until - 1`` (see EpochSampler)."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise AvtoolError("set_epoch needs a loader made by make_loader")
    sampler.set_epoch(epoch, skip, until)
