"""Start a command on several GPUs or nodes through torchrun (``torch.distributed.run``), so that
`avtool train ... --nproc-per-node 8` needs no other tool. The workers rerun the same avtool command
line; they see torchrun's environment (LOCAL_RANK, WORLD_SIZE) and train instead of launching again."""

from __future__ import annotations

import os
from dataclasses import dataclass

from avtool.errors import AvtoolError
from avtool.options import option


@dataclass(frozen=True)
class LaunchConfig:
    """Where the workers of a run start; given on the command line only (not part of a run's config)."""

    nproc_per_node: int = option(
        1,
        flags=("--nproc-per-node", "--nproc_per_node"),
        panel="Launch",
        help="GPUs (worker processes) per node; above 1 launches torchrun.",
    )
    nnodes: int = option(1, panel="Launch", help="Nodes taking part (more than 1 needs --rdzv-endpoint).")
    node_rank: int = option(0, panel="Launch", help="This node's index, 0..nnodes-1.")
    rdzv_endpoint: str = option("", panel="Launch", metavar="HOST:PORT", show_default="none",
                                help="Where the nodes meet, the same on every node (e.g. the first node and a free "
                                "port).")  # fmt: skip
    rdzv_id: str = "avtool"
    """Name of the job shared by its nodes."""

    def needed(self) -> bool:
        return (self.nproc_per_node > 1 or self.nnodes > 1) and "LOCAL_RANK" not in os.environ

    def problems(self) -> list[str]:
        out = []
        if self.nproc_per_node < 1 or self.nnodes < 1:
            out.append("--nproc-per-node and --nnodes must be at least 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            out.append("--nnodes > 1 needs --rdzv-endpoint host:port (the same on every node)")
        if not 0 <= self.node_rank < self.nnodes:
            out.append(f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        return out

    def torchrun_args(self, argv: list[str]) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}"]
        if self.nnodes == 1:
            args.append("--standalone")
        else:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={self.rdzv_id}",
                     f"--node-rank={self.node_rank}"]  # fmt: skip
        return [*args, "-m", "avtool.cli", *argv]


def check_gpus(nproc_per_node: int, device: str) -> None:
    """Refuse, before starting workers, to put more processes on a node than it has GPUs."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return
    count = torch.cuda.device_count()
    if nproc_per_node > count:
        raise AvtoolError(f"--nproc-per-node {nproc_per_node} but this node has {count} GPU(s)")


def launch(cfg: LaunchConfig, argv: list[str]) -> None:
    """Run ``avtool <argv>`` in torchrun's workers and wait; a failed worker is one line, not a traceback
    (the worker prints its own error first)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(cfg.torchrun_args(argv)))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise AvtoolError(
            f"worker rank {rank} failed with exit code {failure.exitcode}; its message is printed above"
        ) from None
