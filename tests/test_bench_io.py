import json
import subprocess
import sys

import pytest

from avtool.bench.io import IoBenchConfig, measure_sequential_read, run_io_bench
from avtool.errors import AvtoolError


def test_sequential_and_random_chunk_reads(tmp_path):
    results = run_io_bench(IoBenchConfig(tmp_path, file_size_mb=8, chunk_files=10, chunk_size_mb=0.5, threads=2))
    sequential, random_chunks = results
    assert sequential.kind == "sequential" and sequential.bytes == 8_000_000
    assert random_chunks.kind == "random-chunks" and random_chunks.files == 10
    assert random_chunks.bytes == 10 * 500_000
    assert all(r.bytes_per_second > 0 and r.cache in ("dropped (posix_fadvise)", "warm") for r in results)
    assert list(tmp_path.iterdir()) == []  # test files are removed


def test_existing_chunk_files_are_read_when_there_are_enough(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.mp4").write_bytes(b"x" * 1000)
    result = run_io_bench(IoBenchConfig(tmp_path, file_size_mb=1, chunk_files=3, threads=1))[1]
    assert result.files == 3 and result.bytes == 3000


def test_unwritable_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(AvtoolError, match="not a folder"):
        measure_sequential_read(tmp_path / "missing", 1024)


def test_cli_writes_csv_and_json_stamped_with_the_environment(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "avtool.cli", "bench", "io", str(tmp_path), "--file-size-mb", "4",
         "--chunk-files", "4", "--chunk-size-mb", "0.25", "--output", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "io.json").read_text())
    assert {"torch", "av", "ffmpeg_version", "cpu_count", "gpus"} <= set(record["env"])
    assert record["config"]["file_size_mb"] == 4
    assert (out / "io.csv").read_text().splitlines()[0].startswith("kind,bytes,seconds")
