"""Fig. 2 of the paper from ``pipeline.csv``: training throughput against the number of GPUs, one panel per
pipeline (left the reference's standard pipeline, right avtool's), with the GPU and CPU throughputs as
lines, the IO throughput as a dashed level, the measured end-to-end throughput as stars and, at each g,
the bound (the smallest of the three)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from avtool.plots._common import new_figure, read_results, save

COLUMNS = (
    "pipeline", "gpus", "workers_per_gpu", "gpu_clips_per_s", "cpu_clips_per_s", "io_clips_per_s",
    "actual_clips_per_s", "bound", "emulated",
)  # fmt: skip
PANELS = {"reference": "standard pipeline (reference)", "avtool": "ours (avtool)"}
"""Panel titles, left to right; other pipelines follow in the CSV's order."""
LINES = (("gpu_clips_per_s", "GPU", "#4c72b0", "o"), ("cpu_clips_per_s", "CPU", "#dd8452", "s"))
IO_COLOR = "#55a868"
BOUND_COLORS = {"GPU": "#4c72b0", "CPU": "#dd8452", "IO": IO_COLOR}
IO_OFF_SCALE = 2.0
"""An IO level more than this many times the highest other throughput is written at the top, not drawn to
scale (it would flatten the lines)."""


def plot_fig2(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (a CSV of `avtool bench pipeline`) as Fig. 2; returns the PNG's path (default:
    ``results`` with the suffix .png)."""
    figure = fig2_figure(read_results(results, COLUMNS, "avtool bench pipeline"))
    return save(figure, Path(results).with_suffix(".png") if out is None else out, dpi)


def fig2_figure(frame: pd.DataFrame) -> Figure:
    """One panel per pipeline of ``frame`` (a `bench pipeline` table), same y scale: clips/s against GPUs."""
    frame = frame.assign(emulated=[emulated(v) for v in frame["emulated"]]).sort_values("gpus", kind="stable")
    names = pipelines(frame)
    figure = new_figure(1.0 + 4.6 * len(names), 5.0)
    axes = np.atleast_1d(figure.subplots(1, len(names), sharey=True))
    top = y_top(frame)
    gpus = sorted(int(g) for g in frame["gpus"].unique())
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        _panel(ax, frame[frame["pipeline"] == name], top)
        letter = f"({chr(ord('a') + i)}) " if len(names) > 1 else ""
        ax.set_title(letter + PANELS.get(name, name), fontsize=10)
        if len(gpus) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xlim(gpus[0] / 1.4, gpus[-1] * 1.4)
        ax.set_xticks(gpus, [str(g) for g in gpus])
        ax.minorticks_off()
        ax.set_xlabel("# of GPUs", labelpad=40)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("clips/sec")
    axes[0].set_ylim(0, top)
    figure.legend(
        handles=_legend(frame, top), loc="outside lower center", ncol=3 * len(names), frameon=False, fontsize=8
    )
    return figure


def pipelines(frame: pd.DataFrame) -> list[str]:
    """The panels' pipelines, left to right: the reference, avtool, then any other."""
    present = list(dict.fromkeys(frame["pipeline"]))
    return [p for p in PANELS if p in present] + [p for p in present if p not in PANELS]


def emulated(value) -> bool:
    """A CSV's ``emulated`` cell as a bool (pandas reads True/False, a mixed column gives strings)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if pd.notna(value) else False


def y_top(frame: pd.DataFrame) -> float:
    """The shared upper y limit: above every GPU, CPU and actual throughput, and the IO level unless it is
    off scale."""
    lines = frame[["gpu_clips_per_s", "cpu_clips_per_s", "actual_clips_per_s"]].apply(pd.to_numeric, errors="coerce")
    highest = float(np.nanmax(lines.to_numpy(float))) if lines.notna().any().any() else 1.0
    io = pd.to_numeric(frame["io_clips_per_s"], errors="coerce").dropna()
    in_scale = io[io <= IO_OFF_SCALE * highest]
    return 1.18 * max(highest, float(in_scale.max()) if len(in_scale) else 0.0) or 1.0


def _panel(ax, rows: pd.DataFrame, top: float) -> None:
    g = rows["gpus"].to_numpy(float)
    hollow = rows["emulated"].to_numpy(bool)
    values = {column: pd.to_numeric(rows[column], errors="coerce").to_numpy(float) for column, *_ in LINES}
    # At each g the higher line's value is written above its point, the lower one's to its lower left
    # (the actual throughput, lower still, writes its own to the right).
    lower = np.fmin(*values.values())
    for column, _, color, marker in LINES:
        ax.plot(g, values[column], color=color, linewidth=1.6, zorder=2)
        for filled in (True, False):
            keep = ~hollow if filled else hollow
            ax.scatter(g[keep], values[column][keep], marker=marker, s=36, zorder=3, color=color, linewidths=1.4,
                       facecolors=color if filled else "white")  # fmt: skip
        for x, v, low in zip(g, values[column], lower, strict=True):
            if np.isfinite(v):
                below = v == low and np.isfinite(lower).all()
                ax.annotate(f"{v:.0f}", (x, v), xytext=(-6, -4) if below else (0, 6), textcoords="offset points",
                            ha="right" if below else "center", va="top" if below else "bottom", fontsize=7,
                            color=color)  # fmt: skip
    io = pd.to_numeric(rows["io_clips_per_s"], errors="coerce").dropna()
    if len(io):
        level = float(io.iloc[0])
        if level <= top:
            ax.axhline(level, color=IO_COLOR, linestyle="--", linewidth=1.4, zorder=1)
            ax.annotate(f"IO {level:.0f}", (0.99, level), xycoords=("axes fraction", "data"), xytext=(0, 3),
                        textcoords="offset points", ha="right", fontsize=7, color=IO_COLOR)  # fmt: skip
        else:
            ax.annotate(f"IO {level:.0f} clips/s (above the scale) ↑", (0.99, 0.98), xycoords="axes fraction",
                        ha="right", va="top", fontsize=7, color=IO_COLOR)  # fmt: skip
    actual = pd.to_numeric(rows["actual_clips_per_s"], errors="coerce").to_numpy(float)
    measured = np.isfinite(actual)
    ax.scatter(g[measured], actual[measured], marker="*", s=110, color="black", zorder=4)
    for x, v in zip(g[measured], actual[measured], strict=True):
        ax.annotate(f"{v:.0f}", (x, v), xytext=(7, -3), textcoords="offset points", fontsize=7)
    # The bound at each g, under its tick label (the x label moves down to make room).
    for x, bound, workers, fake in zip(g, rows["bound"], rows["workers_per_gpu"], hollow, strict=True):
        bound = "?" if pd.isna(bound) else str(bound)
        text = f"{bound}-bound\n{workers} worker{'s' if workers != 1 else ''}/GPU" + ("\n(emulated)" if fake else "")
        ax.text(x, -0.08, text, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6.5,
                color=BOUND_COLORS.get(bound, "#444444"), clip_on=False)  # fmt: skip


def _legend(frame: pd.DataFrame, top: float) -> list[Line2D]:
    handles = [Line2D([], [], color=c, marker=m, label=f"{name} throughput") for _, name, c, m in LINES]
    if (pd.to_numeric(frame["io_clips_per_s"], errors="coerce") <= top).any():  # a dashed level is drawn
        handles.append(Line2D([], [], color=IO_COLOR, linestyle="--", label="IO throughput"))
    if frame["actual_clips_per_s"].notna().any():
        handles.append(
            Line2D([], [], color="black", marker="*", markersize=10, linestyle="", label="actual (measured)")
        )
    if frame["emulated"].any():
        handles.append(Line2D([], [], color="#444444", marker="o", markerfacecolor="white", linestyle="",
                              label="hollow: emulated (g × one GPU)"))  # fmt: skip
    return handles
