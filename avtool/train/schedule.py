"""Learning-rate schedules of the paper's recipes (appendix B), as pure functions of the step."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LrSchedule:
    """Linear warm-up from ``start_lr`` to ``peak_lr`` over ``warmup_steps``, then a half-wave cosine
    down to ``end_lr`` at ``total_steps``; with ``fixed`` the rate is ``peak_lr`` throughout (the
    pretraining recipe's ``--fix-lr``)."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    start_lr: float = 1e-6
    end_lr: float = 1e-5
    fixed: bool = False

    def __call__(self, step: int) -> float:
        if self.fixed:
            return self.peak_lr
        if step < self.warmup_steps:
            return self.start_lr + (self.peak_lr - self.start_lr) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (1 + math.cos(math.pi * progress))
