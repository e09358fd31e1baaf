"""The data loader factory: worker processes, pinned memory, a per-batch timeout and a seeded
distributed sampler whose epoch travels with every index.

The training loop must call ``set_epoch(loader, epoch)`` (or ``loader.sampler.set_epoch``) before
each epoch, as with any DistributedSampler: it reshuffles, and the datasets seed sample i of epoch e
from (seed, e, i).

Hybrid decoding (``DecoderConfig.nvdec_workers`` = K): workers 0…K-1 decode on NVDEC, the others with
PyAV on the CPU. Each worker learns its id in ``worker_init_fn`` and makes its own decoder there
(``DecoderConfig.for_worker``); the sample's frames and crop come from (seed, epoch, index) and an NVDEC
frame reaches the host in the CPU decoder's layout, so a sample is the same, to the pixel, whichever
worker loads it. Why K should be small: every NVDEC worker is a process with its own CUDA context on
the training GPU (memory, and the GPU time-slices between contexts); with one NVDEC worker per core
(15 on the H200 host) the step time doubled. FFmpeg already makes those contexts block rather than
spin while they wait, and opens no stream whose priority could be lowered, so K itself, which the
pipeline bench sizes, is the lever. All workers then start with ``spawn`` (CUDA does not survive a
fork, and a DataLoader has one start method). The DataLoader deals batches to its workers in turn, so
the loader runs at the pace of its slowest worker: an NVDEC worker must keep up with a CPU one.

Shutdown: ``Loader.close()`` (also ``with loader:``, and at garbage collection and exit) asks the
workers to stop, waits ``STOP_GRACE_S`` for all of them together, then terminates and kills
stragglers, and reaps every process: none is left running or a zombie. A worker ends by freeing its
decoder (NVDEC sessions, the CUDA context) and then leaves as a forked process does, with
``os._exit`` after multiprocessing's exit hooks: a spawned worker otherwise runs the interpreter's
teardown, where CUDA's and FFmpeg's objects are destroyed in no set order, and a worker that crashes
there (the SIGABRT at the end of an NVDEC run) interrupted torch's shutdown halfway. A worker that dies
(killed, crashed), a loader that gets no batch within ``LoaderConfig.timeout``, and an AvtoolError
raised in a worker reach the main process as a one-line AvtoolError (``LoaderError`` for the first two),
never as a hang or a multi-line RuntimeError. torch notices a death in its SIGCHLD handler, which
raises wherever the main thread is (in the training step, say); raised inside ``next`` the loader has
stopped its workers already, elsewhere ``close`` (or the exit hook) does.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing.connection
import multiprocessing.util
import os
import re
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torch.utils.data._utils.signal_handling import _remove_worker_pids

from avtool.data.base import ClipDataset
from avtool.errors import AvtoolError
from avtool.video.decode import DecoderConfig, make_decoder

STOP_GRACE_S = 5.0
"""Seconds the workers of a closing loader have, all together, to exit on their own before they are
terminated (and then killed)."""


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


class LoaderError(AvtoolError):
    """The loader's workers died or stalled; the loader has stopped (or is stopping) its workers."""


def _clip_dataset(dataset: Any) -> ClipDataset | None:
    """The ClipDataset under ``dataset``'s wrappers (Subset, the benchmarks' TimedDataset), if any."""
    for _ in range(8):
        if isinstance(dataset, ClipDataset):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


def nvdec_worker_count(decoder: DecoderConfig | None, workers: int) -> int:
    """How many of ``workers`` decode on NVDEC with ``decoder``."""
    if decoder is None:
        return 0
    return workers if decoder.backend == "pyav-nvdec" else min(decoder.nvdec_workers, workers)


def _init_worker(worker_id: int) -> None:
    # Workers decode single-threaded; torch's resize in decode-then-crop must not oversubscribe cores.
    torch.set_num_threads(1)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    clips = _clip_dataset(dataset)
    if clips is not None and clips.clips.decoder.nvdec_workers:
        clips.decoder = make_decoder(clips.clips.decoder.for_worker(worker_id))
    # The lowest priority: after the queues' own exit hooks have flushed them.
    multiprocessing.util.Finalize(None, _end_worker, args=(dataset,), exitpriority=-100)


def _end_worker(dataset: Any) -> None:
    """A worker's last exit hook: free the decoder while CUDA is up, then exit without the interpreter's
    teardown (see the module docstring)."""
    if sys.exc_info()[0] is not None:
        return  # the worker is failing: multiprocessing reports it and sets the exit status
    clips = _clip_dataset(dataset)
    close = getattr(clips.decoder, "close", None) if clips is not None else None
    if close is not None:
        close()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with suppress(OSError, ValueError):
                stream.flush()
    os._exit(0)


class Loader(DataLoader):
    """make_loader's DataLoader: ``close()`` ends its worker processes now; iterating it turns worker
    deaths, stalls and worker errors into one-line AvtoolErrors (see the module docstring)."""

    def __init__(self, *args: Any, nvdec_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nvdec_workers = nvdec_workers
        """Workers 0…nvdec_workers-1 decode on NVDEC, the others on the CPU."""
        self._live: weakref.WeakSet = weakref.WeakSet()
        """torch's multi-process iterators of this loader whose workers may still run."""
        _LOADERS.add(self)

    def __iter__(self) -> Batches:
        return Batches(self, super().__iter__())

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            self._live.add(iterator)
            _watch_worker_deaths()
            _close_loaders_first_at_exit()
        return iterator

    def workers(self) -> list[BaseProcess]:
        """The worker processes started and not yet stopped by ``close``."""
        return [w for iterator in list(self._live) for w in getattr(iterator, "_workers", ())]

    def worker_label(self, index: int, pid: int | None) -> str:
        where = "NVDEC" if index < self.nvdec_workers else "CPU"
        return f"data-loader worker {index} (pid {pid}, {where} decoding)"

    def deaths(self, wait: float = 0.0) -> LoaderError | None:
        """The workers that died (exited by themselves with a failure, or were killed), if any, waiting up
        to ``wait`` s for a dying one: its pipes close (the main process reads EOF) before the kernel
        has made it a zombie that can be reaped."""
        workers = [(i, w) for iterator in list(self._live) for i, w in enumerate(getattr(iterator, "_workers", ()))]
        running = [w.sentinel for _, w in workers if w.exitcode is None]
        if wait and running:
            ended = set(multiprocessing.connection.wait(running, timeout=wait))
            for _, w in workers:
                if w.exitcode is None and w.sentinel in ended:
                    w.join(wait)
        dead = [f"{self.worker_label(i, w.pid)} {_how_it_ended(w)}" for i, w in workers if w.exitcode not in (None, 0)]
        return LoaderError("; ".join(dead)) if dead else None

    def close(self) -> None:
        """Stop the workers and wait until every one has exited and been reaped, killing any that has not
        within ``STOP_GRACE_S``. Idempotent; iterating again starts new workers."""
        for iterator in list(self._live):
            _stop(iterator)
        self._live.clear()
        self._iterator = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_live", None):
            self.close()


class Batches(Iterator):
    """One pass over a Loader (torch's iterator inside), with its failures as one-line AvtoolErrors."""

    def __init__(self, loader: Loader, iterator: Iterator) -> None:
        self._loader = loader
        self._iterator = iterator

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            raise
        except LoaderError:
            self._loader.close()
            raise
        except AvtoolError as e:
            # torch re-raises a worker's exception with "Caught … in DataLoader worker" and the
            # worker's traceback in the message: keep the worker's own line.
            raise type(e)(_worker_message(str(e))) from None
        except Exception as e:
            # torch's words for a dead or stalled worker; or, when a worker died in the middle of a
            # message, what the main process made of the rest (an unpickling error): the death is the news.
            error = (_loader_error(e) if isinstance(e, RuntimeError) else None) or self._loader.deaths(wait=1.0)
            if error is None:
                raise
            self._loader.close()
            raise error from None


_LOADERS: weakref.WeakSet = weakref.WeakSet()


@dataclass
class _Signals:
    watching: bool = False
    """Our SIGCHLD handler wraps torch's."""
    stopping: int = 0
    """Loaders stopping their own workers now: their exits are expected, not errors."""


_SIGNALS = _Signals()


def _watch_worker_deaths() -> None:
    """Wrap torch's SIGCHLD handler, which raises RuntimeError in the main thread wherever it is when a
    worker dies, so that it raises LoaderError (one line, the worker, how it died) instead, and stays
    quiet while a loader stops its own workers."""
    if _SIGNALS.watching or threading.current_thread() is not threading.main_thread():
        return
    torch_handler = signal.getsignal(signal.SIGCHLD)
    if not callable(torch_handler):
        return

    def handler(signum: int, frame: Any) -> None:
        try:
            torch_handler(signum, frame)
        except RuntimeError as e:
            if _SIGNALS.stopping:
                return
            error = _loader_error(e)
            if error is None:
                raise
            raise error from None

    signal.signal(signal.SIGCHLD, handler)
    _SIGNALS.watching = True


def _close_loaders_first_at_exit() -> None:
    # atexit runs the last registered first: registered again after torch's hooks (which a new iterator
    # may just have added), the loaders stop their workers while torch still can, before its hooks
    # run and Python marks itself as exiting (after which torch's own shutdown does nothing).
    atexit.unregister(_close_all)
    atexit.register(_close_all)


def _close_all() -> None:
    for loader in list(_LOADERS):
        loader.close()


def _stop(iterator: Any) -> None:
    """End the workers of one torch iterator: ask, wait, terminate, kill, reap."""
    workers: list[BaseProcess] = list(getattr(iterator, "_workers", ()))
    _SIGNALS.stopping += 1
    try:
        if not getattr(iterator, "_shutdown", True):
            iterator._shutdown = True  # torch's own shutdown (its __del__, its exit hook) now does nothing
            _ask_to_stop(iterator)
            deadline = time.monotonic() + STOP_GRACE_S
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
    finally:
        _release(iterator)
        _end_processes(workers)
        _SIGNALS.stopping -= 1


def _ask_to_stop(iterator: Any) -> None:
    """What torch's ``_shutdown_workers`` does before it waits, one worker at a time, 5 s each."""
    if hasattr(iterator, "_pin_memory_thread"):
        # The pin-memory thread first: it reads the queue the exiting workers write to.
        iterator._pin_memory_thread_done_event.set()
        iterator._worker_result_queue.put((None, None))
        iterator._pin_memory_thread.join(STOP_GRACE_S)
    iterator._workers_done_event.set()
    for queue in iterator._index_queues:
        queue.put(None)  # with the done event set, a worker's loop ends on None


def _release(iterator: Any) -> None:
    for queue in (*getattr(iterator, "_index_queues", ()), getattr(iterator, "_worker_result_queue", None)):
        if queue is not None:
            queue.cancel_join_thread()  # never wait, at exit, to flush a queue that nobody reads
            queue.close()
    if getattr(iterator, "_worker_pids_set", False):
        # Before any terminate or kill: torch's SIGCHLD check would report those as worker failures.
        _remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False


def _end_processes(workers: list[BaseProcess]) -> None:
    """Terminate, then kill, the workers still running, and reap them all."""
    for end in (BaseProcess.terminate, BaseProcess.kill):
        alive = [w for w in workers if w.is_alive()]
        for w in alive:
            end(w)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in alive:
            w.join(max(0.0, deadline - time.monotonic()))
    stuck = [str(w.pid) for w in workers if w.is_alive()]
    if stuck:
        warnings.warn(f"data-loader worker(s) {', '.join(stuck)} still running after SIGKILL (stuck in the "
                      "kernel, e.g. in the GPU driver)", RuntimeWarning, stacklevel=3)  # fmt: skip


_DEATH = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\)")
_TIMEOUT = re.compile(r"DataLoader timed out after (\S+) seconds")
_HINTS = {
    signal.SIGKILL: " (out of memory? the kernel's OOM killer sends SIGKILL: see dmesg)",
    signal.SIGBUS: " (shared memory full? see df -h /dev/shm)",
    signal.SIGSEGV: " (a crash in native code, e.g. a decoder: its last output is above)",
    signal.SIGABRT: " (a crash in native code, e.g. a decoder: its last output is above)",
}


def _loader_error(error: RuntimeError) -> LoaderError | None:
    """torch's RuntimeError for a dead worker or a timeout, as one line; None for any other error."""
    text = str(error)
    if match := _TIMEOUT.match(text):
        return LoaderError(
            f"no batch from the data-loader workers in {float(match[1]):g} s (loader_timeout): a worker hangs, "
            "in a decoder or on a stalled file system"
        )
    if match := _DEATH.match(text):
        pids = [int(pid) for pid in match[1].split(",") if pid.strip()]
        return LoaderError("; ".join(_describe_death(pid, text) for pid in pids))
    return None


def _describe_death(pid: int, torch_text: str) -> str:
    for loader in list(_LOADERS):
        for iterator in list(loader._live):
            for index, w in enumerate(getattr(iterator, "_workers", ())):
                if w.pid == pid:
                    return f"{loader.worker_label(index, pid)} {_how_it_ended(w)}"
    return torch_text.splitlines()[0].strip()  # a worker of another DataLoader


def _how_it_ended(worker: BaseProcess) -> str:
    code = worker.exitcode  # reaps it
    if code is None:
        return "stopped answering"
    if code >= 0:
        return f"exited with status {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"was killed by signal {-code}"
    return f"was killed by {sig.name}{_HINTS.get(sig, '')}"


def _worker_message(text: str) -> str:
    """The worker's own message out of torch's "Caught X in DataLoader worker process N. Original
    Traceback …" (unchanged when it is not one)."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def make_loader(
    dataset: Dataset,
    config: LoaderConfig,
    rank: int | None = None,
    world_size: int | None = None,
    collate_fn: Callable | None = None,
) -> Loader:
    """A Loader over ``dataset`` for this rank; ``loader.sampler`` is the EpochSampler. ``collate_fn``
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
    clips = _clip_dataset(dataset)
    decoder = clips.clips.decoder if clips is not None else None
    nvdec = nvdec_worker_count(decoder, workers)
    if decoder is not None and decoder.nvdec_workers > workers:
        warnings.warn(
            f"--nvdec-workers {decoder.nvdec_workers} with {workers} data-loader worker(s): "
            + (f"all {workers} decode on NVDEC" if workers else "the main process decodes on the CPU"),
            RuntimeWarning, stacklevel=2,
        )  # fmt: skip
    start_method = config.start_method
    if start_method is None and nvdec:
        start_method = "spawn"
    return Loader(
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
        nvdec_workers=nvdec,
    )


def set_epoch(loader: DataLoader, epoch: int, skip: int = 0, until: int | None = None) -> None:
    """Reshuffle for ``epoch`` and make the datasets draw that epoch's frames, crops and texts; ``skip``
    starts at this rank's ``skip``-th sample of the epoch (resuming mid-epoch); ``until`` runs one pass
    on through epoch ``until - 1`` (see EpochSampler)."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise AvtoolError("set_epoch needs a loader made by make_loader")
    sampler.set_epoch(epoch, skip, until)
