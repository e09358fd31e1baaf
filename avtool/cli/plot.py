"""`avtool plot ...`: draw the paper's figures from the CSVs that `avtool bench` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avtool.cli.console import console

plot_app = typer.Typer(help="Draw the paper's figures (PNG) from benchmark CSVs.", no_args_is_help=True)

Out = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="PNG to write.", show_default="RESULTS with the suffix .png"),
]
Dpi = Annotated[int, typer.Option(help="Resolution of the PNG, dots per inch.")]


@plot_app.command("fig3")
def fig3(
    results: Annotated[Path, typer.Argument(help="CSV written by `avtool bench memory`.")],
    output: Out = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 3: GPU memory per video (MB) as stacked LayerNorm / MHA / MLP / other bars, one per variant."""
    from avtool.plots.fig3 import plot_fig3

    console.print(f"wrote {plot_fig3(results, output, dpi)}", highlight=False)


@plot_app.command("fig4")
def fig4(
    results: Annotated[Path, typer.Argument(help="CSV written by `avtool bench model`.")],
    output: Out = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 4: max batch size (# of videos, log scale) and training throughput (videos/s) per video
    architecture (TSF-B, ViT-B) and variant."""
    from avtool.plots.fig4 import plot_fig4

    console.print(f"wrote {plot_fig4(results, output, dpi)}", highlight=False)


@plot_app.command("fig5")
def fig5(
    results: Annotated[Path, typer.Argument(help="decode.csv written by `avtool bench decode`.")],
    output: Out = None,
    dpi: Dpi = 150,
) -> None:
    """Fig. 5: latency per video (ms), throughput per process and overall throughput (videos/s) against the
    number of processes, decode-then-crop vs fused."""
    from avtool.plots.fig5 import plot_fig5

    console.print(f"wrote {plot_fig5(results, output, dpi)}", highlight=False)
