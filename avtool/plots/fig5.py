"""Fig. 5 of the paper from ``decode.csv``: (a) latency per video, (b) throughput per process and
(c) overall throughput of the video loader against the number of processes, one line per
backend × mode × access."""

from __future__ import annotations

from pathlib import Path

from avtool.plots._common import new_figure, read_results, save

PANELS = (
    ("latency_ms", "(a) latency per video (ms)"),
    ("throughput_per_proc", "(b) throughput per process (videos/s)"),
    ("throughput", "(c) overall throughput (videos/s)"),
)
COLUMNS = ("backend", "mode", "access", "procs", *(column for column, _ in PANELS))
# The reference pipeline dashed, Fused DecodeCrop solid; the access pattern told apart by the marker.
LINES = {"decode-then-crop": "--", "fused": "-"}
MARKERS = {"sequential": "s", "seek": "o"}


def plot_fig5(results: Path, out: Path | None = None, dpi: int = 150) -> Path:
    """Draw ``results`` (the CSV of `avtool bench decode`) as three panels; returns the PNG's path
    (default: ``results`` with the suffix .png)."""
    frame = read_results(results, COLUMNS, "avtool bench decode")
    procs = sorted(int(p) for p in frame["procs"].unique())
    figure = new_figure(15.0, 4.8)
    axes = figure.subplots(1, 3)
    for (backend, mode, access), rows in frame.groupby(["backend", "mode", "access"], sort=True):
        rows = rows.sort_values("procs")
        for ax, (column, _) in zip(axes, PANELS, strict=True):
            ax.plot(rows["procs"], rows[column], linestyle=LINES.get(mode, ":"), marker=MARKERS.get(access, "^"),
                    label=f"{backend} {mode} {access}")  # fmt: skip
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        if len(procs) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(procs, [str(p) for p in procs])
        ax.set_xlabel("# of processes")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False, fontsize=8)
    figure.suptitle(_title(frame), fontsize=10)
    return save(figure, Path(results).with_suffix(".png") if out is None else out, dpi)


def _title(frame) -> str:
    """What was decoded, from the first row (one `bench decode` run uses one clip setting)."""
    row = frame.iloc[0]
    parts = []
    if "videos" in frame.columns:
        parts.append(f"{row['videos']} clips in memory")
    if "frames" in frame.columns and "size" in frame.columns:
        parts.append(f"{row['frames']} frames at {row['size']}²")
    if "clip_seconds" in frame.columns:
        parts.append(
            "over the whole chunk" if row["clip_seconds"] == "chunk" else f"from {row['clip_seconds']}-s clips"
        )
    return ", ".join(parts)
