"""Write files so that a reader, a crash or Ctrl-C never sees half of one: temp name, then rename."""

from __future__ import annotations

import os
from pathlib import Path


def partial_name(path: Path) -> Path:
    """The temporary sibling of ``path`` used while it is being written."""
    return path.with_name(f".{path.name}.partial")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
