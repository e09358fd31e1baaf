"""Locate the FFmpeg binary that avtool runs (the one imageio-ffmpeg ships, unless overridden)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

from avtool.errors import AvtoolError


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$AVTOOL_FFMPEG``, else imageio-ffmpeg's bundled build (which has
    libx264), else ``ffmpeg`` on PATH."""
    override = os.environ.get("AVTOOL_FFMPEG")
    if override:
        if not os.path.isfile(override):
            raise AvtoolError(f"AVTOOL_FFMPEG={override} does not exist")
        return override
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found is None:
            raise AvtoolError("no ffmpeg binary found: install imageio-ffmpeg or put ffmpeg on PATH") from None
        return found


@functools.cache
def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version``, e.g. ``ffmpeg version n9.0.2 ...``."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    return ctypes.CDLL(name, use_errno=True) if name else None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when avtool dies (Linux's parent-death signal), so an
    avtool killed with ``kill -9`` leaves no FFmpeg encoding on; None where the OS has no such signal.

    Linux sends it when the *thread* that started the child exits: avtool's encoder threads wait for their
    FFmpeg, so they outlive it."""
    libc = _libc()  # loaded here, not in the child between fork and exec
    if libc is None:
        return None
    prctl = libc.prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # avtool died before the signal was armed
            os._exit(1)

    return arm
