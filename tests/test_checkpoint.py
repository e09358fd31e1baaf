import random

import numpy as np
import pytest
import torch

from avtool.errors import AvtoolError
from avtool.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_checkpoint_path,
)


def test_round_trip_restores_weights_optimizer_and_random_streams(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "rng": rng_state()}
    path = save_checkpoint(step_checkpoint_path(tmp_path, 7), state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    other = torch.nn.Linear(3, 2)
    other.load_state_dict(loaded["model"])
    assert torch.equal(other.weight, model.weight) and loaded["step"] == 7
    assert list(tmp_path.iterdir()) == [path]  # no temporary file is left behind


def test_latest_and_pruning(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 20, 100):
        save_checkpoint(step_checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / "checkpoint_best.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == step_checkpoint_path(tmp_path, 100)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_best.pt", "checkpoint_step00000020.pt", "checkpoint_step00000100.pt",
    ]  # fmt: skip


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "checkpoint_step00000001.pt"
    bad.write_bytes(b"truncated")
    with pytest.raises(AvtoolError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(AvtoolError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class _RunsACommand:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_runs_nothing_and_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint_step00000001.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsACommand(marker)}, path)
    with pytest.raises(AvtoolError, match=r"refused to load this checkpoint: .*\((posix|os|nt)\.system\); nothing"):
        load_checkpoint(path)
    assert not marker.exists()
    for damaged in (b"truncated", path.read_bytes()[:100], b"PK\x03\x04" + bytes(50)):
        path.write_bytes(damaged)
        with pytest.raises(AvtoolError, match="not a readable checkpoint"):
            load_checkpoint(path)
