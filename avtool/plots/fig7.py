"""Fig. 7 of the paper: VideoMAE's seconds per iteration and data-loading overhead against the loader workers
per GPU, decode-then-crop against Fused DecodeCrop (from `avtool bench ladder --job videomae`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from avtool.bench.fig7 import workers_of
from avtool.errors import AvtoolError
from avtool.plots._common import new_figure, read_results, save
from avtool.video.decode import MODES

COLUMNS = ("job", "batch_size", "row", "status", "s_per_it", "data_s_per_it")
LABELS = {"decode-then-crop": "decode, then crop", "fused": "Fused DecodeCrop"}
STYLES = {"decode-then-crop": ("#dd8452", "o"), "fused": ("#4c72b0", "s")}


def plot_fig7(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (the CSV of `avtool bench ladder --job videomae`) as Fig. 7; returns the PNG's path."""
    frame = read_results(results, COLUMNS, "avtool bench ladder --job videomae")
    frame = frame[(frame["job"] == "videomae") & (frame["status"] == "ok")]
    if frame.empty:
        raise AvtoolError(f"{results} has no measured videomae rows: run `avtool bench ladder --job videomae`")
    return save(fig7_figure(frame), Path(results).with_suffix(".png") if out is None else out, dpi)


def fig7_figure(frame: pd.DataFrame) -> Figure:
    """Two panels (iteration time, data-loading overhead) of s/iteration against workers, a line per decoding
    mode and batch size."""
    frame = frame.assign(workers=frame["row"].map(workers_of), mode=frame["row"].str.rsplit("-w", n=1).str[0])
    figure = new_figure(8.0, 3.4)
    panels = figure.subplots(1, 2, sharex=True)
    batches = sorted(frame["batch_size"].unique())
    for ax, column, title in zip(panels, ("s_per_it", "data_s_per_it"), ("Iteration", "Data-loading overhead"),
                                 strict=True):  # fmt: skip
        for mode in [m for m in MODES if m in set(frame["mode"])] + sorted(set(frame["mode"]) - set(MODES)):
            for batch, dash in zip(batches, ("-", "--", ":", "-."), strict=False):
                rows = frame[(frame["mode"] == mode) & (frame["batch_size"] == batch)].sort_values("workers")
                if rows.empty:
                    continue
                color, marker = STYLES.get(mode, ("#55a868", "^"))
                label = LABELS[mode] if mode in LABELS else _repeated_label(mode)
                label += f", B = {batch}" if len(batches) > 1 else ""
                ax.plot(rows["workers"], rows[column], dash, color=color, marker=marker, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("loader workers per GPU")
        ax.set_ylabel("s / iteration")
        ax.set_ylim(bottom=0)
        ax.set_xticks(sorted(frame["workers"].unique()))
        ax.spines[["top", "right"]].set_visible(False)
    panels[0].legend(frameon=False, fontsize=9)
    return figure


def _repeated_label(mode: str) -> str:
    """``fused-rs2`` → "Fused DecodeCrop, 2 views per clip"."""
    return f"{LABELS['fused']}, {mode.rsplit('-rs', 1)[1]} views per clip"
