"""Fig. 4 of the paper: largest batch (log scale) and training throughput of the dual encoder, per video
architecture (TSF-B, ViT-B) and variant (baseline, + flash-attn, + grad-ckpt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from avtool.bench.labels import VARIANT_NAMES, arch_label
from avtool.plots._common import new_figure, read_results, save

COLUMNS = ("arch", "variant", "batch_size", "videos_per_second")
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
# Settings that can differ between rows of one (arch, variant) when several runs share a CSV; the first
# that differs names the bar.
DISTINGUISHING = (
    "attn_impl", "ckpt_blocks", "ckpt_keep_attention", "compiled", "compile_mode", "batch_size", "dtype", "device",
)  # fmt: skip


def plot_fig4(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (a CSV of `avtool bench model`) as the two panels of Fig. 4; returns the PNG's path
    (default: ``results`` with the suffix .png)."""
    figure = fig4_figure(read_results(results, COLUMNS, "avtool bench model"))
    return save(figure, Path(results).with_suffix(".png") if out is None else out, dpi)


def fig4_figure(frame: pd.DataFrame) -> Figure:
    """Left: batch size per variant and architecture (log scale); right: videos/s. One bar per row of
    ``frame`` (a `bench model` table)."""
    widths = frame["width"] if "width" in frame.columns else pd.Series([768] * len(frame))
    frame = frame.assign(
        arch_name=[arch_label(a, int(w)) for a, w in zip(frame["arch"], widths, strict=True)],
        bar=bar_labels(frame),
    )
    archs = list(dict.fromkeys(frame["arch_name"]))
    bars = list(dict.fromkeys(frame["bar"]))
    searched = "batch_size_is_max" in frame.columns and frame["batch_size_is_max"].astype(bool).all()

    figure = new_figure(4.0 + 2.2 * len(bars), 4.0)
    left, right = figure.subplots(1, 2)
    _grouped_bars(left, frame, archs, bars, "batch_size", "{:.0f}")
    left.set_yscale("log")
    # Start the log axis at a power of ten, so that bar heights compare as in the paper's figure.
    left.set_ylim(bottom=10 ** np.floor(np.log10(max(1.0, frame["batch_size"].min()))))
    left.set_ylabel("max batch size (# of videos)" if searched else "batch size (# of videos)")
    _grouped_bars(right, frame, archs, bars, "videos_per_second", "{:.1f}")
    right.set_ylabel("videos/sec")
    row = frame.iloc[0]
    setting = [f"{row['num_frames']} frames"] if "num_frames" in frame.columns else []
    setting += [str(row[c]) for c in ("dtype", "device") if c in frame.columns]
    if "memory_limit_gb" in frame.columns and pd.notna(row["memory_limit_gb"]):
        setting.append(f"≤ {row['memory_limit_gb']:g} GB")
    figure.suptitle(", ".join(setting), fontsize=10)
    return figure


def bar_labels(frame: pd.DataFrame) -> list[str]:
    """One label per row: the variant, plus the first setting that tells rows of one (arch, variant) apart."""
    labels = [VARIANT_NAMES.get(v, v) for v in frame["variant"]]
    for (_, _), group in frame.groupby(["arch", "variant"], sort=False):
        if len(group) < 2:
            continue
        for column in DISTINGUISHING:
            if column in group.columns and group[column].nunique(dropna=False) > 1:
                for index in group.index:
                    labels[frame.index.get_loc(index)] += f"\n{column}={group.at[index, column]}"
                break
    return labels


def _grouped_bars(ax, frame: pd.DataFrame, archs: list[str], bars: list[str], column: str, fmt: str) -> None:
    """Bars of ``column`` grouped by variant (x) with one colour per architecture, values written on top."""
    x = np.arange(len(bars))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        rows = frame[frame["arch_name"] == arch].drop_duplicates("bar", keep="last").set_index("bar")
        values = np.array([rows[column].get(bar, np.nan) for bar in bars], dtype=float)
        offset = (i - (len(archs) - 1) / 2) * width
        drawn = ax.bar(x + offset, values, width, label=arch, color=COLORS[i % len(COLORS)])
        ax.bar_label(drawn, labels=["" if np.isnan(v) else fmt.format(v) for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, bars)
    ax.legend(title="Video Architecture", frameon=False, fontsize=8, title_fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.12)
