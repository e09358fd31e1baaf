"""Write files so that a reader, a crash or Ctrl-C never sees half of one: temp name, then rename."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def partial_name(path: Path) -> Path:
    """A temporary sibling of ``path`` to write it under, unique to this call: two processes (or threads)
    writing one file at once (``chunk --shard 0/2`` and ``1/2`` merging one manifest) must not share it."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


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
