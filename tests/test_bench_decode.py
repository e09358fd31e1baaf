import shutil
import time
from dataclasses import replace

import pandas as pd
import pytest

from avtool.bench.decode import DecodeBenchConfig, load_items, measure_pool, run_decode_bench, write_decode_results
from avtool.errors import AvtoolError
from avtool.plots.fig5 import plot_fig5
from avtool.video.clips import ChunkIndex
from avtool.video.decode import DecoderConfig

pytest_plugins = ("tests.clip_fixtures",)


def test_tiny_fig5_run_writes_rows_csv_and_plot(chunked_sample, small_sample, tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(small_sample / "ek100" / "P02", sources)  # one 10-s video is enough to compare lengths
    cfg = replace(DecodeBenchConfig.tiny(chunked_sample, sources=sources, scratch=tmp_path / "scratch"),
                  backends=("pyav",))  # fmt: skip
    seen = []
    result = run_decode_bench(cfg, on_row=seen.append)
    assert len(result.rows) == 1 * 2 * 2 * 2  # backend × mode × access × pool size
    assert seen == result.rows + result.chunk_rows
    table = pd.DataFrame(result.rows)
    assert (table["videos"] == 6).all() and (table["throughput"] > 0).all() and (table["latency_ms"] > 0).all()
    assert set(table["device"]) == {"cpu"}
    # CPU time of the single-threaded workers: about their latency, never far above it.
    assert (table["cpu_ms_per_video"] > 0).all() and (table["cpu_ms_per_video"] < 1.5 * table["latency_ms"] + 5).all()
    for access in ("seek", "sequential"):
        rows = table[table["access"] == access]
        stages = ["open_ms", "demux_ms", "decode_ms", "convert_ms", "resize_ms", "other_ms"]
        # The per-stage times add up to the latency (within timer noise).
        sums = rows[stages].sum(axis=1)
        assert ((sums - rows["latency_ms"]).abs() < 0.1 * rows["latency_ms"] + 0.5).all()
    assert (table[table["mode"] == "fused"]["resize_ms"] == 0).all()
    assert (table[table["mode"] == "decode-then-crop"]["resize_ms"] > 0).all()
    seek = table[table["access"] == "seek"]["frames_decoded_per_video"]
    sequential = table[table["access"] == "sequential"]["frames_decoded_per_video"]
    assert seek.max() < sequential.min()
    # Two pool sizes, the same work: the overall throughput is per-process throughput × processes.
    two = table[table["procs"] == 2]
    assert ((two["throughput"] - 2 * two["throughput_per_proc"]).abs() < 0.01).all()

    chunks = pd.DataFrame(result.chunk_rows)
    assert sorted(chunks["chunk_len"].unique()) == [2, 10] and set(chunks["access"]) == {"seek", "sequential"}
    assert (tmp_path / "scratch/chunks-2s/P02_01.MP4/8.MP4").is_file()
    assert (tmp_path / "scratch/chunks-10s/P02_01.MP4/0.MP4").is_file()
    long = chunks[chunks["chunk_len"] == 10].set_index("access")
    short = chunks[chunks["chunk_len"] == 2].set_index("access")
    assert long["file_bytes_per_clip"]["seek"] > 2 * short["file_bytes_per_clip"]["seek"]
    # Seeking reads only part of a long chunk; reading from its start reads more and decodes more.
    assert long["bytes_read_per_clip"]["seek"] < long["bytes_read_per_clip"]["sequential"]
    assert long["frames_decoded_per_clip"]["seek"] < long["frames_decoded_per_clip"]["sequential"]

    paths = write_decode_results(tmp_path / "out", result, cfg)
    assert [p.name for p in paths] == [
        "decode.csv",
        "decode.json",
        "decode-chunk-length.csv",
        "decode-chunk-length.json",
    ]
    assert len(pd.read_csv(tmp_path / "out/decode.csv")) == len(result.rows)
    png = plot_fig5(tmp_path / "out/decode.csv", tmp_path / "out/fig5.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_items_share_frames_and_crops_across_rows_and_cycle_short_roots(chunked_sample):
    cfg = replace(DecodeBenchConfig.tiny(chunked_sample), videos=40)
    a, b = load_items(cfg), load_items(cfg)
    assert [(i.read.frame_ids, i.crop) for i in a] == [(i.read.frame_ids, i.crop) for i in b]
    assert all(isinstance(i.read.source, bytes) for i in a)  # in memory: no disk IO is timed
    assert len({i.read.name for i in a}) < 40  # fewer full chunks than clips: chunks are reused
    # Full-length chunks only (the last, shorter chunk of a video is left out), 4 frames each.
    index = ChunkIndex(chunked_sample)
    seconds = {str(p): f / r for k in index.keys() for p, f, r in zip(*_chunks(index.get(k)), strict=True)}
    assert min(seconds.values()) < 4 and all(seconds[i.read.name] == 5 for i in a)
    assert all(len(i.read.frame_ids) == 4 for i in a)


def _chunks(video):
    return video.paths, video.frames, video.fps


def test_pool_sizes_and_validation(chunked_sample, tmp_path):
    assert DecodeBenchConfig(chunked_sample, procs=(3,)).pool_sizes == (3,)
    sizes = DecodeBenchConfig(chunked_sample).pool_sizes
    assert sizes[0] == 1 and all(b == 2 * a for a, b in zip(sizes, sizes[1:-1], strict=False))
    with pytest.raises(AvtoolError, match="backends must be among.*modes must be among"):
        DecodeBenchConfig(chunked_sample, backends=("nope",), modes=("fast",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvtoolError, match="no chunked videos found"):
        load_items(DecodeBenchConfig(tmp_path / "empty"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(AvtoolError, match="lacks the column.*avtool bench decode"):
        plot_fig5(tmp_path / "bad.csv", tmp_path / "x.png")


def test_a_time_budget_bounds_a_row_and_keeps_every_worker_busy(chunked_sample):
    items = load_items(replace(DecodeBenchConfig.tiny(chunked_sample), videos=3))
    config = DecoderConfig(access="sequential")
    row = measure_pool(items, config, 64, procs=2, seconds=0.5)
    # Each worker cycles through the clips past the 3 a count-based row would decode, and stops
    # after the clip in hand once the budget is spent.
    assert row["videos"] > 3 and 0.5 <= row["wall_s"] < 0.5 + 3 * row["latency_ms"] / 1e3 + 0.5
    assert row["throughput"] == pytest.approx(row["videos"] / row["wall_s"], rel=0.01)
    with pytest.raises(AvtoolError, match="seconds must be positive"):
        DecodeBenchConfig(chunked_sample, seconds=0)


def test_a_worker_that_never_reports_fails_the_row_instead_of_hanging():
    import multiprocessing as mp

    from avtool.bench.decode import _collect

    context = mp.get_context("spawn")
    sleeper = context.Process(target=time.sleep, args=(30,), daemon=True)
    sleeper.start()
    progress = context.Array("q", 1, lock=False)
    begin = time.monotonic()
    with pytest.raises(AvtoolError, match="no clip decoded and no worker reported for 2 s"):
        _collect(context.Queue(), [sleeper], progress, stall_s=2.0)
    assert time.monotonic() - begin < 10
    sleeper.join(timeout=5)
    assert not sleeper.is_alive()  # killed, not left behind


def _slow_but_steady(progress, results) -> None:
    for k in range(6):
        time.sleep(0.5)
        progress[0] = k + 1
    results.put({"done": True})


def test_a_slow_worker_that_keeps_finishing_clips_is_not_a_stall():
    import multiprocessing as mp

    from avtool.bench.decode import _collect

    context = mp.get_context("fork")
    progress, results = context.Array("q", 1, lock=False), context.Queue()
    worker = context.Process(target=_slow_but_steady, args=(progress, results), daemon=True)
    worker.start()
    assert _collect(results, [worker], progress, stall_s=1.5) == [{"done": True}]  # 3 s in all


def test_nvdec_rows_run_in_spawned_workers_and_report_where_they_decoded(chunked_sample):
    items = load_items(replace(DecodeBenchConfig.tiny(chunked_sample), videos=2))
    row = measure_pool(items, DecoderConfig(backend="pyav-nvdec"), 64, procs=1)
    assert row["videos"] == 2 and row["throughput"] > 0
    assert row["device"] == "cuda (NVDEC)" or row["device"].startswith("cpu (NVDEC unavailable")


def test_cli_bench_decode_and_plot_fig5(chunked_sample, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "avtool.cli"]
    result = subprocess.run([*cmd, "bench", "decode", str(chunked_sample), "--tiny", "--output", str(out)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "videos/s" in result.stdout and (out / "decode.csv").exists() and (out / "decode.json").exists()
    result = subprocess.run([*cmd, "plot", "fig5", str(out / "decode.csv")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "decode.png").stat().st_size > 10_000
    # The name for the chunk-length comparison, and the earlier one, both parse.
    for flag in ("--chunk-len-compare", "--sources"):
        result = subprocess.run([*cmd, "bench", "decode", str(tmp_path / "missing"), flag, str(tmp_path), "--tiny"],
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode != 0 and "no such folder" in result.stderr


def test_the_ceiling_task_runs_in_the_same_pools_and_every_row_gets_its_scaling(chunked_sample, tmp_path):
    cfg = replace(DecodeBenchConfig.tiny(chunked_sample), backends=("pyav",), modes=("fused",), accesses=("seek",),
                  seconds=0.5, ceiling=True)  # fmt: skip
    result = run_decode_bench(cfg)
    assert [r["procs"] for r in result.ceiling_rows] == [1, 2]
    assert {r["backend"] for r in result.ceiling_rows} == {"zlib-inflate"}
    for rows in (result.rows, result.ceiling_rows):
        single, pair = rows
        assert single["scaling"] == 1.0
        assert pair["scaling"] == pytest.approx(pair["throughput"] / (2 * single["throughput"]), abs=0.002)
        assert all(r["videos"] > 0 and r["cpu_ms_per_video"] > 0 for r in rows)
    names = {p.name for p in write_decode_results(tmp_path, result, cfg)}
    assert {"decode.csv", "decode-ceiling.csv", "decode-ceiling.json"} <= names
    assert "zlib-inflate" not in pd.read_csv(tmp_path / "decode.csv")["backend"].tolist()  # Fig. 5 rows only
