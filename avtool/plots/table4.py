"""Table 4 of the paper from ``ladder.csv``: (a) the ladder's rows as a table (data-loading overhead,
training speed, throughput per cumulative change, for each batch size) and (b) the throughput of each row
as a horizontal bar, split into the share of the iteration spent computing and the share spent waiting
for data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from avtool.plots._common import new_figure, read_results, save

COLUMNS = (
    "job", "batch_size", "row", "change", "status", "data_s_per_it", "s_per_it", "videos_per_s",
    "data_wait_share", "peak_memory_gb", "loader_clips_per_s", "steady",
)  # fmt: skip
# The table's columns: heading, CSV column, format (None: text).
TABLE = (
    ("batch", "batch_size", None), ("row", "row", None), ("change", "change", None),
    ("data s/it", "data_s_per_it", "{:.3g}"), ("s/it", "s_per_it", "{:.3g}"), ("videos/s", "videos_per_s", "{:.1f}"),
    ("data-wait %", "data_wait_share", "{:.1%}"), ("memory GB", "peak_memory_gb", "{:.1f}"),
    ("loader clips/s", "loader_clips_per_s", "{:.1f}"),
)  # fmt: skip
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
UNSTEADY = "†"
UNSTEADY_NOTE = f"{UNSTEADY} prefetch not drained: the throughput may be above its steady state"
CHANGE_WIDTH = 48
"""Characters per line of the change column before it wraps."""


def plot_table4(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (a CSV of `avtool bench ladder`) as Table 4 and its throughput bars; returns the
    PNG's path (default: ``results`` with the suffix .png)."""
    figure = table4_figure(read_results(results, COLUMNS, "avtool bench ladder"))
    return save(figure, Path(results).with_suffix(".png") if out is None else out, dpi)


def table4_figure(frame: pd.DataFrame) -> Figure:
    """Top: the table, one line per row of ``frame`` (a `bench ladder` table); bottom: videos/s per row,
    one group per batch size, compute share solid and data-wait share hatched; OOM rows say OOM."""
    frame = frame.reset_index(drop=True)
    cells = table_cells(frame)
    lines = [max(c.count("\n") + 1 for c in row) for row in cells]
    batches = list(dict.fromkeys(frame["batch_size"]))
    notes = footnotes(frame)
    heights = [0.5 + 0.22 * (sum(lines) + 1), 1.2 + 0.28 * (len(frame) + len(batches))]
    if notes:
        heights.append(0.1 + 0.16 * len(notes))
    figure = new_figure(13.0, sum(heights) + 0.3)
    # Subfigures, so that the table spans the width while the bars leave room for their labels.
    parts = figure.subfigures(len(heights), 1, height_ratios=heights)
    _draw_table(parts[0].add_subplot(), cells, lines, frame)
    _draw_bars(parts[1].add_subplot(), frame, batches)
    if notes:
        parts[2].text(0.01, 0.5, "\n".join(notes), fontsize=8, ha="left", va="center", color="#444444")
    figure.suptitle(_title(frame), fontsize=10)
    return figure


def table_cells(frame: pd.DataFrame) -> list[list[str]]:
    """The table's text, one list per row: numbers formatted, OOM rows say OOM, failed rows say failed."""
    cells = []
    for _, row in frame.iterrows():
        status = _status(row)
        line = []
        for _, column, fmt in TABLE:
            value = row[column]
            if column == "row":
                line.append(f"{value}{UNSTEADY if unsteady(row) else ''}")
            elif column == "change":
                line.append("\n".join(textwrap.wrap(str(value), CHANGE_WIDTH)) or "")
            elif fmt is None:
                line.append(str(value))
            elif status != "ok":
                line.append("OOM" if status == "OOM" else "failed")
            else:
                line.append("–" if pd.isna(value) else fmt.format(float(value)))
        cells.append(line)
    return cells


def throughput_parts(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row, videos/s × (1 − data wait) and videos/s × data wait (NaN where the row did not run; no
    recorded wait counts as none)."""
    ok = np.array([_status(row) == "ok" for _, row in frame.iterrows()])
    videos = np.where(ok, pd.to_numeric(frame["videos_per_s"], errors="coerce"), np.nan)
    wait = pd.to_numeric(frame["data_wait_share"], errors="coerce").fillna(0.0).clip(0.0, 1.0).to_numpy()
    return videos * (1 - wait), videos * wait


def unsteady(row: pd.Series) -> bool:
    """Whether ``row`` says its loader's prefetch was not drained (``steady`` False; missing counts as steady)."""
    value = row.get("steady")
    if isinstance(value, (bool, np.bool_)):
        return not value
    return isinstance(value, str) and value.strip().lower() == "false"


def footnotes(frame: pd.DataFrame) -> list[str]:
    """The lines under the figure: what † means, and what each failed row failed with."""
    notes = [UNSTEADY_NOTE] if any(unsteady(row) for _, row in frame.iterrows()) else []
    for _, row in frame.iterrows():
        status = _status(row)
        if status not in ("ok", "OOM"):
            notes.append(f"failed: B={row['batch_size']} {row['row']}: {textwrap.shorten(status, 120)}")
    return notes


def _status(row: pd.Series) -> str:
    status = row["status"]
    return "failed" if pd.isna(status) else str(status).strip()


def _draw_table(ax, cells: list[list[str]], lines: list[int], frame: pd.DataFrame) -> None:
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=[heading for heading, _, _ in TABLE], loc="center", cellLoc="right",
                     bbox=[0, 0, 1, 1])  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(TABLE))))
    unit = 1.0 / (sum(lines) + 1)
    shades = {b: i % 2 for i, b in enumerate(dict.fromkeys(frame["batch_size"]))}
    for (r, c), cell in table.get_celld().items():
        cell.set_height(unit * (1 if r == 0 else lines[r - 1]))
        cell.set_edgecolor("#cccccc")
        if c in (1, 2):
            cell.set_text_props(ha="left")
            cell.PAD = 0.02
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
        elif shades[frame.at[r - 1, "batch_size"]]:
            cell.set_facecolor("#f5f5f5")
        if r > 0 and cells[r - 1][3] in ("OOM", "failed"):
            cell.get_text().set_color("#c44e52" if c >= 3 else "black")
    ax.set_title("(a) runtime after each cumulative change", fontsize=10, loc="left")


def _draw_bars(ax, frame: pd.DataFrame, batches: list) -> None:
    """Horizontal bars top to bottom: a bold heading per batch size, then its rows in order."""
    compute, wait = throughput_parts(frame)
    positions, labels, headings = [], [], []
    y = 0
    for b in batches:
        headings.append(len(labels))
        labels.append(f"batch {b}")
        positions.append(y)
        y += 1
        for index in frame.index[frame["batch_size"] == b]:
            row = frame.loc[index]
            labels.append(f"{row['row']}{UNSTEADY if unsteady(row) else ''}")
            positions.append(y)
            y += 1
    ys = iter(p for i, p in enumerate(positions) if i not in headings)
    right = np.nanmax(compute + wait) if np.isfinite(compute + wait).any() else 1.0
    for g, b in enumerate(batches):
        color = COLORS[g % len(COLORS)]
        for index in frame.index[frame["batch_size"] == b]:
            at = next(ys)
            status = _status(frame.loc[index])
            if status != "ok" or np.isnan(compute[index]):
                ax.text(right * 0.01, at, "OOM" if status == "OOM" else "failed", va="center", ha="left",
                        fontsize=8, color="#c44e52", weight="bold")  # fmt: skip
                continue
            ax.barh(at, compute[index], 0.7, color=color)
            ax.barh(at, wait[index], 0.7, left=compute[index], color=color, alpha=0.35, hatch="///",
                    edgecolor=color, linewidth=0)  # fmt: skip
            total = compute[index] + wait[index]
            share = wait[index] / total if total else 0.0
            ax.text(total, at, f" {total:.1f}  ({share:.1%} data wait)", va="center", ha="left", fontsize=8)
    ax.set_yticks(positions, labels)
    for i in headings:
        ax.get_yticklabels()[i].set_fontweight("bold")
    ax.set_ylim(y - 0.5, -0.5)
    ax.set_xlim(0, right * 1.3)
    ax.set_xlabel("videos/s")
    ax.set_title("(b) throughput: computing (solid) and waiting for data (hatched)", fontsize=10, loc="left")
    ax.legend(
        handles=[Patch(color="#777777", label="videos/s × (1 − data wait)"),
                 Patch(facecolor="#777777", alpha=0.35, hatch="///", edgecolor="#777777", label="data wait")],
        frameon=False, fontsize=8, loc="lower right",
    )  # fmt: skip
    ax.grid(True, axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _title(frame: pd.DataFrame) -> str:
    """What was run, from the first row (one `bench ladder` run is one job on one machine)."""
    row = frame.iloc[0]
    parts = [f"Table 4 ({row['job']})"]
    if "cache" in frame.columns and pd.notna(row["cache"]):
        parts.append(f"page cache {row['cache']}")
    return ", ".join(parts)
