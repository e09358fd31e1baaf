"""Locate the FFmpeg binary that avtool runs (the one imageio-ffmpeg ships, unless overridden)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

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
