"""Fig. 3 of the paper: GPU memory per video of the video ViT, stacked by layer type, one bar per variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from avtool.bench.labels import VARIANT_NAMES, arch_label
from avtool.plots._common import new_figure, read_results, save

PARTS = (("layernorm_mb", "LayerNorm"), ("mha_mb", "MHA"), ("mlp_mb", "MLP"), ("other_mb", "other"))
COLUMNS = ("variant", "arch", *(column for column, _ in PARTS))
COLORS = {"LayerNorm": "#4c72b0", "MHA": "#dd8452", "MLP": "#55a868", "other": "#b0b0b0"}


def plot_fig3(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (a CSV of `avtool bench memory`) as Fig. 3; returns the PNG's path (default:
    ``results`` with the suffix .png)."""
    figure = fig3_figure(read_results(results, COLUMNS, "avtool bench memory"))
    return save(figure, Path(results).with_suffix(".png") if out is None else out, dpi)


def fig3_figure(frame: pd.DataFrame) -> Figure:
    """Stacked bars of per-video memory by layer type, one per row of ``frame`` (a `bench memory` table);
    a cross marks the CUDA-measured total where there is one."""
    several_archs = frame["arch"].nunique() > 1
    labels = [
        VARIANT_NAMES.get(row.variant, row.variant) + (f"\n{row.arch}" if several_archs else "")
        for row in frame.itertuples()
    ]
    figure = new_figure(1.6 + 1.3 * len(frame), 4.0)
    ax = figure.add_subplot()
    x = np.arange(len(frame))
    bottom = np.zeros(len(frame))
    for column, name in PARTS:
        values = frame[column].fillna(0).to_numpy(float)
        ax.bar(x, values, 0.6, bottom=bottom, label=name, color=COLORS[name])
        bottom += values
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.0f}" if total >= 10 else f"{total:.2g}", (i, total), ha="center", va="bottom",
                    xytext=(0, 2), textcoords="offset points", fontsize=9)  # fmt: skip
    if "allocated_mb" in frame and frame["allocated_mb"].notna().any():
        ax.scatter(x, frame["allocated_mb"], marker="x", color="black", zorder=3, label="CUDA allocated")
    ax.set_xticks(x, labels)
    ax.set_ylabel("GPU RAM (MB/video)")
    ax.set_ylim(0, max(bottom) * 1.12 or 1)
    ax.legend(frameon=False, fontsize=9)
    ax.set_title(_title(frame), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return figure


def _title(frame: pd.DataFrame) -> str:
    """What was measured, from the first row (one `bench memory` run measures one tower)."""
    row = frame.iloc[0]
    parts = [arch_label(row["arch"], int(row["width"]))] if "width" in frame.columns else []
    if {"image_size", "num_frames"} <= set(frame.columns):
        parts.append(f"{row['image_size']}² × {row['num_frames']} frames")
    if {"tubelet_size", "patch_size"} <= set(frame.columns):
        parts.append(f"cube {row['tubelet_size']}×{row['patch_size']}×{row['patch_size']}")
    parts += [str(row[column]) for column in ("dtype", "device") if column in frame.columns]
    return ", ".join(parts)
