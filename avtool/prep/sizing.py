"""Chunk length from the paper's IO rule (§4.3, Eq. 3): B·ρ·T ≤ S_r·Δ.

A training step reads one chunk per clip, so the node reads B·ρ·T bits per step; the disk must
deliver them within the step time Δ. The longest chunk that keeps the GPUs fed is
T_max = S_r·Δ / (B·ρ); longer chunks only save duplication at the boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Quantity:
    symbol: str
    value: float
    unit: str
    source: str
    """Where the number came from: a flag, a measurement, the paper's default."""

    def __str__(self) -> str:
        return f"{self.symbol} = {_fmt(self.value)} {self.unit}  ({self.source})"


@dataclass(frozen=True)
class ChunkSizing:
    batch_size: Quantity
    """B: clips per training step on the node (all GPUs together)."""
    bitrate: Quantity
    """ρ: mean bitrate of the chunks, bits/s."""
    read_speed: Quantity
    """S_r: read throughput of the volume that holds the chunks, bytes/s."""
    step_time: Quantity
    """Δ: seconds per training step."""
    safety: float
    """Fraction of the read budget kept in reserve for fluctuations of the disk."""

    @property
    def max_chunk_seconds(self) -> float:
        """T_max = S_r·Δ / (B·ρ), with S_r converted to bits."""
        return 8 * self.read_speed.value * self.step_time.value / (self.batch_size.value * self.bitrate.value)

    @property
    def chosen_chunk_seconds(self) -> int:
        """T_max less the safety margin, rounded down to whole seconds (at least 1)."""
        # The epsilon keeps 15.625·0.96 = 15.0 from becoming 14.999… and rounding down to 14.
        return max(1, math.floor(self.max_chunk_seconds * (1 - self.safety) + 1e-9))

    def required_read_speed(self, chunk_seconds: float) -> float:
        """Bytes/s the volume must deliver to feed chunks of ``chunk_seconds``."""
        return self.batch_size.value * self.bitrate.value * chunk_seconds / (8 * self.step_time.value)

    def derivation(self) -> list[str]:
        """The derivation as text lines, each quantity with its unit and origin."""
        b, rho, s_r, delta = self.batch_size, self.bitrate, self.read_speed, self.step_time
        return [
            "B·ρ·T ≤ S_r·Δ  (paper §4.3, Eq. 3)",
            f"  {b}",
            f"  ρ = {rho.value / 1e6:.3f} Mb/s  ({rho.source})",
            f"  S_r = {s_r.value / 1e6:.1f} MB/s  ({s_r.source})",
            f"  {delta}",
            f"T_max = S_r·Δ / (B·ρ) = {s_r.value * 8 / 1e6:.0f} Mb/s · {_fmt(delta.value)} s"
            f" / ({_fmt(b.value)} · {rho.value / 1e6:.3f} Mb/s) = {self.max_chunk_seconds:.2f} s",
            f"T = floor(T_max · (1 - {self.safety:g} safety)) = {self.chosen_chunk_seconds} s",
        ]


def _fmt(value: float) -> str:
    return f"{value:g}"
