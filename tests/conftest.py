"""Shared fixtures: small real videos made on the fly with FFmpeg (no mocks, no downloads)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from avtool.prep.sample import SampleConfig, make_sample
from avtool.video.ffmpeg import ffmpeg_exe

# Before torch's thread pool exists, as every avtool command that trains does first (engine.flush_denormals:
# the setting is per thread, and the pool's threads copy it when they start).
torch.set_flush_denormal(True)


def make_video(
    path: Path,
    seconds: float,
    fps: int = 30,
    size: str = "320x240",
    rotation: int | None = None,
    audio: bool = False,
) -> Path:
    """A libx264 test-pattern video (with a moving box, so frames differ) written by FFmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(args, check=True)
    if rotation is not None:
        # -display_rotation is an input option; re-mux so the output carries the display matrix.
        rotated = path.with_name(f"rot-{path.name}")
        subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-display_rotation", str(rotation),
             "-i", str(path), "-c", "copy", str(rotated)],
            check=True,
        )  # fmt: skip
        rotated.replace(path)
    return path


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


SMALL_SAMPLE = dict(
    ego4d_durations=(20.0, 12.0),
    ek100_videos=(("P01_01", 60, 8.0), ("P02_01", 30, 10.0)),
    kinetics_clips=0,
)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory) -> Path:
    """A small version of `avtool sample` (same code, shorter videos), made once per test session."""
    dest = tmp_path_factory.mktemp("sample")
    make_sample(SampleConfig(dest=dest, seed=0, **SMALL_SAMPLE))
    return dest


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def avtool_main(monkeypatch, capsys) -> Callable[..., CliResult]:
    """Run the console script's entry point in this process (a process per call costs seconds of imports);
    tests that need a real process (tracebacks, signals, torchrun) start one."""
    from avtool.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["avtool", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
