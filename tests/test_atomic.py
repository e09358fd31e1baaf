"""Atomic writes under concurrency, and FFmpeg's life tied to avtool's."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

from avtool.atomic import atomic_write_text


def _write_many(path: str, tag: str, count: int) -> None:
    for i in range(count):
        atomic_write_text(path, f"{tag}-{i}\n" * 100)


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    # Two processes (as chunk --shard 0/2 and 1/2 merging one manifest) and threads in each: with one fixed
    # temporary name a writer's rename would find its file already renamed by another (FileNotFoundError).
    path = str(tmp_path / "manifest.csv")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, f"p{n}", 150)) for n in range(2)]
    for p in procs:
        p.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: _write_many(path, f"t{n}", 75), range(4)))
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert len(lines) == 100 and len(set(lines)) == 1  # one whole write, not a mix
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # no temporary file left


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed(tmp_path):
    parent_code = textwrap.dedent(
        """
        import subprocess, sys, time
        from avtool.video.ffmpeg import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                 preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # as `kill -9 avtool`: no handler runs
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
