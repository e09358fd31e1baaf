"""Names the paper uses in its figures and tables (kept apart from the benchmarks so plots need no torch)."""

from __future__ import annotations

_SIZES = {384: "S", 768: "B", 1024: "L", 1280: "H"}
VARIANT_NAMES = {"baseline": "baseline", "flash-attn": "+ flash-attn", "grad-ckpt": "+ grad-ckpt"}
"""Fig. 3/4's bar labels: each variant adds to the one before."""


def arch_label(arch: str, width: int) -> str:
    """The paper's name of a video tower: `TSF-B`, `ViT-B`, `ViT-L`...; other widths as `ViT-w512`."""
    name = {"timesformer": "TSF", "vit": "ViT"}.get(arch, arch)
    return f"{name}-{_SIZES.get(width, f'w{width}')}"
