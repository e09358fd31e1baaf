"""Hybrid NVDEC/CPU decoding in the data loader, and the loader's shutdown: every worker process exits
and is reaped, and a worker that dies or hangs is a one-line AvtoolError, not a hang. Real videos and
decoders throughout; on a machine without NVDEC the NVDEC workers take their CPU fallback."""

import multiprocessing
import os
import re
import shutil
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import VideoReformatter

import avtool.data.loader as loader_module
from avtool.data import ClipConfig, Ego4DConfig, Ego4DNarrations, LoaderConfig, make_loader, set_epoch
from avtool.data.loader import LoaderError
from avtool.errors import AvtoolError
from avtool.video.crops import Crop
from avtool.video.decode import DecoderConfig
from avtool.video.decode.fused import FusedConverter
from avtool.video.decode.pyav import to_software_layout
from tests.conftest import make_video

pytest_plugins = ("tests.clip_fixtures",)

CONFIG = LoaderConfig(batch_size=2, workers=2, timeout=60, prefetch_factor=1, seed=3)


def ego4d(sample: Path, chunks: Path, decoder: DecoderConfig | None = None) -> Ego4DNarrations:
    clips = ClipConfig(chunks / "ego4d/v1/full_scale", size=64, decoder=decoder or DecoderConfig())
    return Ego4DNarrations(Ego4DConfig(sample / "ego4d/ego4d_train.rephraser.pkl", clips))


def assert_all_exited(workers, codes: dict[int, int] | None = None) -> None:
    """Every worker has exited (with status 0 unless ``codes`` says otherwise) and been reaped: signal 0
    reaches a zombie, so ProcessLookupError means the process is gone. (torch's workers also exit with 0
    when their parent terminates them: ``close_quickly`` tells those apart.)"""
    assert workers
    for i, w in enumerate(workers):
        assert w.exitcode == (codes or {}).get(i, 0), f"worker {i}: exit code {w.exitcode}"
        with pytest.raises(ProcessLookupError):
            os.kill(w.pid, 0)


def close_quickly(loader) -> None:
    """Close ``loader``, whose workers must leave when asked, before any would be terminated."""
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < loader_module.STOP_GRACE_S


def test_each_worker_gets_its_decoder_and_the_config_is_checked():
    hybrid = DecoderConfig(nvdec_workers=2, mode="decode-then-crop")
    backends = [hybrid.for_worker(i).backend for i in (0, 1, 2, 5)]
    assert backends == ["pyav-nvdec", "pyav-nvdec", "pyav", "pyav"]
    assert hybrid.for_worker(None).backend == "pyav"  # the main process never opens NVDEC
    assert {hybrid.for_worker(i).mode for i in range(3)} == {"decode-then-crop"}
    assert DecoderConfig().for_worker(0) == DecoderConfig()
    with pytest.raises(AvtoolError, match="--nvdec-workers 1 needs --decoder pyav.*pyav-nvdec alone puts every"):
        DecoderConfig(backend="pyav-nvdec", nvdec_workers=1)
    with pytest.raises(AvtoolError, match="needs --decoder pyav .*got --decoder decord"):
        DecoderConfig(backend="decord", nvdec_workers=1)
    with pytest.raises(AvtoolError, match="--nvdec-workers must be 0 or more"):
        DecoderConfig(nvdec_workers=-1)


def test_nvdec_frames_reach_the_host_as_the_cpu_decoders_frames(tmp_path):
    # NVDEC's surfaces are nv12; the CPU decoder's frames yuv420p. An nv12 frame made on the CPU stands
    # in for a downloaded surface (the same samples): after to_software_layout the crop (odd offsets)
    # and scale give the CPU's pixels exactly.
    with av.open(str(make_video(tmp_path / "v.mp4", 0.3, size="320x240"))) as container:
        frames = list(container.decode(video=0))[:3]
    host = VideoReformatter()
    for frame in frames:
        assert frame.format.name == "yuv420p"
        again = to_software_layout(frame.reformat(format="nv12"), host)
        assert again.format.name == "yuv420p"
        np.testing.assert_array_equal(again.to_ndarray(), frame.to_ndarray())  # the planes, without padding
        for crop in (Crop(37, 21, 201, 153), Crop(0, 0, 320, 240, flip=True)):
            outputs = []
            for f in (frame, again):
                converter = FusedConverter(f, frame.time_base)
                converter.start(crop, 64)
                outputs.append(np.array(converter(f)))
            np.testing.assert_array_equal(outputs[0], outputs[1])


def test_hybrid_loader_gives_the_cpu_loaders_batches_and_its_workers_exit(small_sample, chunked_sample, capfd):
    cpu = make_loader(ego4d(small_sample, chunked_sample), CONFIG, rank=0, world_size=1)
    hybrid = make_loader(ego4d(small_sample, chunked_sample, DecoderConfig(nvdec_workers=1)), CONFIG, 0, 1)
    assert hybrid.nvdec_workers == 1 and cpu.nvdec_workers == 0
    assert hybrid.multiprocessing_context.get_start_method() == "spawn"  # CUDA does not survive a fork
    assert hybrid.dataset.clips.decoder.nvdec_workers == 1  # recorded in the job's config
    with cpu, hybrid:
        expected, got = list(cpu), list(hybrid)
        workers = hybrid.workers()
        assert len(workers) == 2
        close_quickly(hybrid)
    assert_all_exited(workers)
    assert len(got) == len(expected) > 2
    for a, b in zip(expected, got, strict=True):
        assert a["index"].tolist() == b["index"].tolist()
        # Bit for bit, whichever worker (NVDEC or CPU) loaded the batch: worker 0 made the even ones.
        assert torch.equal(a["video"], b["video"])
    fallbacks = [line for line in capfd.readouterr().err.splitlines() if "pyav-nvdec: NVDEC unavailable" in line]
    # Without a GPU the NVDEC worker says so once, on one line, and decodes on the CPU (hence the equal
    # batches); with one it decodes on NVDEC, and the batches are still equal, bit for bit.
    assert len(fallbacks) == 1 if not torch.cuda.is_available() else len(fallbacks) <= 1
    assert all(re.search(r"pyav-nvdec: NVDEC unavailable: .*; decoding on the CPU instead$", f) for f in fallbacks)


def test_loader_closed_mid_epoch_ends_its_workers_and_worker_errors_are_one_line(
    small_sample, chunked_sample, tmp_path
):
    root = tmp_path / "chunks"
    for part in ("ego4d", ".avtool"):
        shutil.copytree(chunked_sample / part, root / part)
    shutil.copy(chunked_sample / "manifest.csv", root / "manifest.csv")
    loader = make_loader(ego4d(small_sample, root), CONFIG, rank=0, world_size=1)
    batches = iter(loader)
    next(batches)
    first = loader.workers()
    close_quickly(loader)
    assert_all_exited(first)
    loader.close()  # idempotent
    assert loader.workers() == []
    # A chunk gone after the index was built: the worker's AvtoolError arrives as its own one line.
    for chunk in (root / "ego4d").rglob("*.mp4/0.mp4"):
        chunk.unlink()
    batches = iter(loader)  # new workers
    second = loader.workers()
    assert {w.pid for w in second}.isdisjoint(w.pid for w in first)
    with loader, pytest.raises(AvtoolError) as caught:
        list(batches)
    assert re.fullmatch(r"\S*ego4d/\S+\.mp4/0\.mp4: chunk file missing", str(caught.value))
    assert_all_exited(second)


def test_a_killed_worker_is_a_one_line_error_and_the_rest_are_reaped(small_sample, chunked_sample):
    loader = make_loader(ego4d(small_sample, chunked_sample), CONFIG, rank=0, world_size=1)
    set_epoch(loader, 0, until=50)
    batches = iter(loader)
    next(batches)
    workers = loader.workers()
    # torch notices the death in its SIGCHLD handler, which raises wherever the main thread is.
    with pytest.raises(LoaderError) as caught:
        os.kill(workers[1].pid, signal.SIGKILL)
        for _ in range(1000):
            next(batches)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(rf"^data-loader worker 1 \(pid {workers[1].pid}, CPU decoding\) was killed by SIGKILL ", message)
    close_quickly(loader)  # Batches may have closed it already (when the error surfaced inside next)
    assert_all_exited(workers, codes={1: -signal.SIGKILL})


def test_a_stalled_read_times_out_and_the_stuck_workers_are_ended(small_sample, chunked_sample, tmp_path, monkeypatch):
    monkeypatch.setattr(loader_module, "STOP_GRACE_S", 0.5)
    root = tmp_path / "chunks"
    for part in ("ego4d", ".avtool"):
        shutil.copytree(chunked_sample / part, root / part)
    shutil.copy(chunked_sample / "manifest.csv", root / "manifest.csv")
    data = ego4d(small_sample, root)
    for chunk in (root / "ego4d").rglob("*.mp4/*.mp4"):
        chunk.unlink()
        os.mkfifo(chunk)  # opening it blocks until a writer comes: a read that never returns
    config = LoaderConfig(batch_size=2, workers=2, timeout=1.5, prefetch_factor=1, seed=3)
    loader = make_loader(data, config, rank=0, world_size=1)
    batches = iter(loader)
    workers = loader.workers()
    with pytest.raises(LoaderError, match=r"^no batch from the data-loader workers in 1.5 s \(loader_timeout\)"):
        next(batches)
    # Stopped as the error was raised: stuck in open(), they could not take the request to stop and were
    # terminated (after which torch's workers exit with 0).
    assert_all_exited(workers)


def _sleep_through_sigterm(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def test_a_worker_that_ignores_sigterm_is_killed_and_reaped(monkeypatch):
    monkeypatch.setattr(loader_module, "STOP_GRACE_S", 0.3)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_sleep_through_sigterm, args=(ready,), daemon=True)
    process.start()
    assert ready.wait(10)
    loader_module._end_processes([process])
    assert_all_exited([process], codes={0: -signal.SIGKILL})
