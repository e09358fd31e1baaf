"""`avtool plot ...`: draw the paper's figures from the CSVs that `avtool bench` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avtool.cli.console import console

plot_app = typer.Typer(help="Draw the paper's figures (PNG) from benchmark CSVs.", no_args_is_help=True)

Out = Annotated[
    Path | None, typer.Option("--output", "-o", help="Folder for the PNG.", show_default="the folder of RESULTS")
]
Png = Annotated[str | None, typer.Option("--png", help="File name of the PNG.", show_default="RESULTS' name with .png")]


def _png(results: Path, output: Path | None, png: str | None) -> Path:
    """Where a figure of ``results`` goes: ``--output`` is always a folder, the file name is derived or --png."""
    return (output if output is not None else results.parent) / (png or f"{results.stem}.png")


Dpi = Annotated[int, typer.Option(help="Resolution of the PNG, dots per inch.")]


@plot_app.command("fig2")
def fig2(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="CSV written by `avtool bench pipeline`.")],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 2: GPU, CPU and IO throughput (clips/s) against the number of GPUs, the standard pipeline
    (reference) left and avtool's right, with the measured throughput and the bound at each count."""
    from avtool.plots.fig2 import plot_fig2

    console.print(f"wrote {plot_fig2(results, _png(results, output, png), dpi)}", highlight=False)


@plot_app.command("fig3")
def fig3(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="CSV written by `avtool bench memory`.")],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 3: GPU memory per video (MB) as stacked LayerNorm / MHA / MLP / other bars, one per variant."""
    from avtool.plots.fig3 import plot_fig3

    console.print(f"wrote {plot_fig3(results, _png(results, output, png), dpi)}", highlight=False)


@plot_app.command("fig4")
def fig4(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="CSV written by `avtool bench model`.")],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 4: max batch size (# of videos, log scale) and training throughput (videos/s) per video
    architecture (TSF-B, ViT-B) and variant."""
    from avtool.plots.fig4 import plot_fig4

    console.print(f"wrote {plot_fig4(results, _png(results, output, png), dpi)}", highlight=False)


@plot_app.command("fig5")
def fig5(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="decode.csv written by `avtool bench decode`.")],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 5: latency per video (ms), throughput per process and overall throughput (videos/s) against the
    number of processes, decode-then-crop vs fused."""
    from avtool.plots.fig5 import plot_fig5

    console.print(f"wrote {plot_fig5(results, _png(results, output, png), dpi)}", highlight=False)


@plot_app.command("fig7")
def fig7(
    results: Annotated[
        Path, typer.Argument(metavar="RESULTS", help="CSV written by `avtool bench ladder --job videomae`.")
    ],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 7: VideoMAE's seconds per iteration and data-loading overhead against loader workers per GPU,
    decode-then-crop against Fused DecodeCrop."""
    from avtool.plots.fig7 import plot_fig7

    console.print(f"wrote {plot_fig7(results, _png(results, output, png), dpi)}", highlight=False)


@plot_app.command("table4")
def table4(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="CSV written by `avtool bench ladder`.")],
    output: Out = None,
    png: Png = None,
    dpi: Dpi = 150,
) -> None:
    """Table 4: data-loading overhead, training speed (s/it) and throughput after each cumulative change,
    per batch size, as a table and as bars split into compute and data wait."""
    from avtool.plots.table4 import plot_table4

    console.print(f"wrote {plot_table4(results, _png(results, output, png), dpi)}", highlight=False)
