"""One optimiser step, as `avtool train` runs it and `avtool bench model` times it.

For each micro-batch: the loss under autocast, then backward of the loss scaled for float16 and divided
by the number of micro-batches (under DDP, gradients are averaged across ranks only in the last
micro-batch's backward). Then optional clipping of the global gradient norm, the optimiser step, the
scaler's update and zeroing the gradients. What is specific to the caller (fetching batches, the model's
forward and loss, compilation) stays in the ``loss`` callable and the micro-batches it is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Batch = TypeVar("Batch")


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast; a disabled scaler (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


@dataclass(eq=False)
class TrainStep:
    """What one optimiser step needs; call it with the step's micro-batches and their loss."""

    model: nn.Module
    """The trained module: under DDP its wrapper (for ``no_sync``). Its parameters are the ones clipped."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    """From ``grad_scaler``; saved in checkpoints, so it may be replaced (after a failed step, on resume)."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    """Autocast dtype of the forward and the loss; None: no autocast."""
    accum_steps: int = 1
    """Micro-batches per optimiser step."""
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this value; None: no clipping."""

    def __call__(
        self,
        micro_batches: Iterable[Batch],
        loss: Callable[[Batch], torch.Tensor],
        on_phase: Callable[[str], None] | None = None,
    ) -> torch.Tensor:
        """One optimiser step over the first ``accum_steps`` of ``micro_batches``; returns the mean loss.

        ``micro_batches`` is read lazily, one micro-batch before its forward (outside autocast), so a loader
        can be passed directly. ``on_phase`` (memory probes) is called after each micro-batch's "forward"
        and "backward", and after the "optimizer" step."""
        on_phase = on_phase or (lambda phase: None)
        total = torch.zeros((), device=self.device)
        batches = iter(micro_batches)
        for micro in range(self.accum_steps):
            batch = next(batches)
            with self._sync_gradients(last=micro == self.accum_steps - 1):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    value = loss(batch)
                on_phase("forward")
                self.scaler.scale(value / self.accum_steps).backward()
                on_phase("backward")
            total += value.detach() / self.accum_steps
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        on_phase("optimizer")
        return total

    def _sync_gradients(self, last: bool) -> contextlib.AbstractContextManager:
        # DDP averages gradients in backward; between accumulated micro-batches that would be wasted traffic.
        if isinstance(self.model, DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()
