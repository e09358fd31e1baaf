"""Chunk length from the paper's IO rule (§4.3, Eq. 3): B·ρ·T ≤ S_r·Δ, and the decode budget beside it.

A training step reads one chunk per clip, so the node reads B·ρ·T bits per step; the disk must
deliver them within the step time Δ. The longest chunk that keeps the GPUs fed is
T_max = S_r·Δ / (B·ρ); longer chunks only save duplication at the boundaries.

Once the disk keeps up, decoding is the next bound: the CPUs must decode the clips as fast as the
GPUs take them, clips/s per core · cores ≥ B / Δ. Encodings that decode faster (libx264's fastdecode
tune) cost bytes, which tightens Eq. 3; ``DecodeBudget`` weighs candidate encodings against both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


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


@dataclass(frozen=True)
class Candidate:
    """One way to encode, with what its trial measured."""

    flags: str
    """How to ask for it, e.g. ``--tune fastdecode``."""
    bitrate: float
    """ρ of its trial encode, bits/s."""
    clips_per_core: float
    """Clips decoded per CPU-second by one single-threaded decoder, on its trial encode."""
    requested: bool = False
    """The settings the command line asked for."""


@dataclass(frozen=True)
class Verdict:
    """How one candidate fares against the read budget (Eq. 3) and the decode budget."""

    candidate: Candidate
    chunk_seconds: int
    """T: the given chunk length, or Eq. 3's for this candidate's ρ (``--chunk-len auto``)."""
    max_chunk_seconds: float
    decodable: float
    """Clips/s the cores decode: clips/s per core · cores."""
    needed: float

    @property
    def read_ok(self) -> bool:
        return self.chunk_seconds <= self.max_chunk_seconds

    @property
    def decode_ok(self) -> bool:
        return self.decodable >= self.needed


@dataclass(frozen=True)
class DecodeBudget:
    """Decode budget (clips/s per core · cores ≥ clips/s the GPUs take) next to Eq. 3, over candidate
    encodings; ``recommended`` is the one that satisfies both with the fewest bytes."""

    sizing: ChunkSizing
    """B, S_r, Δ and the safety margin of Eq. 3 (ρ is each candidate's own)."""
    cores: Quantity
    clip: str
    """What one trial clip is, for the derivation."""
    candidates: tuple[Candidate, ...]
    chunk_len: int | None
    """The chunk length asked for; None: Eq. 3 solves it per candidate (``--chunk-len auto``)."""
    gpu_rate: Quantity | None = None
    """Clips/s the GPUs take when given; None: B/Δ, one step's clips per step time."""

    @property
    def needed(self) -> float:
        if self.gpu_rate is not None:
            return self.gpu_rate.value
        return self.sizing.batch_size.value / self.sizing.step_time.value

    def verdict(self, candidate: Candidate) -> Verdict:
        sizing = replace(self.sizing, bitrate=replace(self.sizing.bitrate, value=candidate.bitrate))
        chunk = self.chunk_len if self.chunk_len is not None else sizing.chosen_chunk_seconds
        decodable = candidate.clips_per_core * self.cores.value
        return Verdict(candidate, chunk, sizing.max_chunk_seconds, decodable, self.needed)

    @property
    def verdicts(self) -> list[Verdict]:
        return [self.verdict(c) for c in self.candidates]

    @property
    def recommended(self) -> Verdict | None:
        """Of the candidates that satisfy both budgets, the one with the fewest bytes (the requested
        settings on a tie); None when none does."""
        good = [v for v in self.verdicts if v.read_ok and v.decode_ok]
        return min(good, key=lambda v: (v.candidate.bitrate, not v.candidate.requested), default=None)

    def derivation(self) -> list[str]:
        """The decode budget as text lines: each quantity with its origin, each candidate against both
        budgets, then the recommendation."""
        lines = [
            "clips/s per core · cores ≥ clips/s the GPUs take",
            f"  needed = {self._needed_text()}",
            f"  cores = {_fmt(self.cores.value)}  ({self.cores.source})",
            f"  clips/s per core: {self.clip}",
        ]
        for v in self.verdicts:
            c = v.candidate
            read = "≤" if v.read_ok else ">"
            decode = "≥" if v.decode_ok else "<"
            lines += [
                f"  {c.flags}{' (asked)' if c.requested else ''}: ρ = {c.bitrate / 1e6:.3f} Mb/s",
                f"    read:   T = {v.chunk_seconds} s {read} T_max = {v.max_chunk_seconds:.2f} s",
                f"    decode: {c.clips_per_core:.1f} clips/s · {_fmt(self.cores.value)} cores"
                f" = {v.decodable:.0f} {decode} {v.needed:.0f} clips/s",
            ]
        return lines + [self.conclusion()]

    def conclusion(self) -> str:
        """One line: what to use, and why the others do not do."""
        best = self.recommended
        if best is not None:
            others = "; ".join(
                f"{v.candidate.flags}: {_shortfall(v)}" for v in self.verdicts if not (v.read_ok and v.decode_ok)
            )
            use = f"→ use {best.candidate.flags}: {best.decodable:.0f} ≥ {best.needed:.0f} clips/s decodable"
            return use + f", {best.chunk_seconds}-s chunks readable" + (f" ({others})" if others else "")
        readable = [v for v in self.verdicts if v.read_ok]
        if not readable:
            smallest = min(self.verdicts, key=lambda v: v.candidate.bitrate)
            if self.chunk_len is None:
                return "→ no encoding fits the read budget even at 1-s chunks: a faster volume, smaller B or longer Δ"
            longest = max(1, math.floor(smallest.max_chunk_seconds))
            return f"→ no encoding fits the read budget at {self.chunk_len}-s chunks: use --chunk-len {longest} or less"
        fastest = max(readable, key=lambda v: v.decodable)
        per_core = fastest.candidate.clips_per_core
        cores = f"{math.ceil(fastest.needed / per_core)} cores" if per_core > 0 else "more cores"
        return (
            f"→ no encoding satisfies both: {fastest.candidate.flags} decodes {fastest.decodable:.0f} of"
            f" {fastest.needed:.0f} clips/s; it needs {cores}, or fewer clips/s"
        )

    def _needed_text(self) -> str:
        if self.gpu_rate is not None:
            return f"{_fmt(self.needed)} clips/s  ({self.gpu_rate.source})"
        b, delta = self.sizing.batch_size, self.sizing.step_time
        origin = f"{b.source}, {delta.source}"
        return f"B / Δ = {_fmt(b.value)} / {_fmt(delta.value)} s = {self.needed:.0f} clips/s  ({origin})"


def _shortfall(v: Verdict) -> str:
    if not v.decode_ok:
        return f"{v.decodable:.0f} < {v.needed:.0f} clips/s"
    return f"T_max {v.max_chunk_seconds:.1f} s < {v.chunk_seconds} s"


def _fmt(value: float) -> str:
    return f"{value:g}"
