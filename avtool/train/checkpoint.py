"""Checkpoints that survive a crash mid-write and restore a run exactly: weights, optimiser, scaler,
step, RNG states and the config, written to a temporary name and renamed."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avtool.atomic import partial_name
from avtool.errors import AvtoolError

_STEP_FILE = re.compile(r"^checkpoint_step(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from, in types ``weights_only`` loading admits (NumPy's
    key array as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary sibling, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def step_checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"checkpoint_step{step:08d}.pt"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step in ``out_dir`` (what ``--resume auto`` continues from)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(steps)[1] if steps else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents. Checkpoints are untrusted input (shared, downloaded): loaded with
    ``weights_only``, which builds tensors and plain containers and calls nothing a file names, so avtool's
    checkpoints hold only those (configs as JSON text and dicts)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AvtoolError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise AvtoolError(f"{path}: a folder, not a checkpoint") from None
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            refused = re.search(r"(?:GLOBAL|global:?) ([\w.]+)", str(e))
            name = f" ({refused.group(1)})" if refused else ""
            raise AvtoolError(f"{path}: refused to load this checkpoint: it names code or types beyond tensors and "
                              f"plain containers{name}; nothing in it was run") from None  # fmt: skip
        raise AvtoolError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    except (RuntimeError, EOFError, OSError, IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        # A damaged file fails wherever its bytes stop making sense: any of these, from zipfile or the unpickler.
        raise AvtoolError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` most recent step checkpoints (the best one has its own name)."""
    out_dir = Path(out_dir)
    steps = sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STEP_FILE.match(p.name)))
    for _, path in steps[: max(0, len(steps) - keep)]:
        path.unlink(missing_ok=True)
