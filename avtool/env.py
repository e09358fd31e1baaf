"""`avtool env`: the software and hardware a result was measured on; every benchmark stamps it."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import avtool
from avtool.errors import AvtoolError
from avtool.video.ffmpeg import ffmpeg_exe, ffmpeg_version


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_revision() -> str | None:
    """The git commit of the avtool checkout this package runs from (``+dirty`` with uncommitted
    changes to tracked files anywhere in it, benchmarks/ included): a benchmark row then names the
    exact code that measured it. None for an installed copy, even one inside some other repository."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package.parent), *args], capture_output=True, text=True,
                                  timeout=5)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package.parent or not (package.parent / "pyproject.toml").is_file():
        return None
    head, status = git("rev-parse", "--short=12", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    if head is None or status is None:
        return None
    return head + ("+dirty" if status else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({"index": i, "name": name if isinstance(name, str) else name.decode(),
                         "memory_gib": round(memory.total / 2**30, 1)})  # fmt: skip
        driver = pynvml.nvmlSystemGetDriverVersion()
        for gpu in gpus:
            gpu["driver"] = driver if isinstance(driver, str) else driver.decode()
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _nvdec_available() -> bool:
    """True when PyAV's FFmpeg can open a CUDA device for NVDEC decoding."""
    try:
        import av.codec.hwaccel as hwaccel

        if "cuda" not in hwaccel.hwdevices_available():
            return False
        hwaccel.HWAccel(device_type="cuda", allow_software_fallback=False)
        return _gpus() != []
    except Exception:  # any failure means "not usable here", which is what we report
        return False


def _sdpa_backends() -> dict[str, bool]:
    import torch

    if not torch.cuda.is_available():
        return {"math": True, "flash": False, "efficient": False, "cudnn": False}
    cuda = torch.backends.cuda
    return {
        "math": True,
        "flash": bool(getattr(cuda, "is_flash_attention_available", lambda: True)()),
        "efficient": True,
        "cudnn": bool(torch.backends.cudnn.is_available()),
    }


def _ffmpeg() -> dict:
    # GPU-only benchmarks run where no ffmpeg is installed; the stamp says so instead of failing.
    try:
        return {"ffmpeg": ffmpeg_exe(), "ffmpeg_version": ffmpeg_version()}
    except AvtoolError as e:
        return {"ffmpeg": None, "ffmpeg_version": f"unavailable ({e})"}


def collect_environment() -> dict:
    """A flat description of this machine and avtool's dependencies, JSON-serialisable."""
    import torch

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "avtool": _version("avtool") or avtool.__version__,
        "avtool_commit": _source_revision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "av": _version("av"),
        "decord": _version("decord"),
        "open_clip": _version("open_clip_torch"),
        **_ffmpeg(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": _gpus(),
        "nvdec": _nvdec_available(),
        "sdpa_backends": _sdpa_backends(),
        "flash_attn_package": _version("flash-attn"),
        "flash_attn_4_package": _version("flash-attn-4"),
        "cutlass_dsl": _version("nvidia-cutlass-dsl"),
        "quack_kernels": _version("quack-kernels"),
    }
