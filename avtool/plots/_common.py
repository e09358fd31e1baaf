"""What every figure needs: reading a benchmark CSV with a clear error, and a headless figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avtool.errors import AvtoolError


def read_results(path: Path, columns: tuple[str, ...], command: str) -> pd.DataFrame:
    """The rows of a results CSV, checked to hold ``columns`` and at least one row."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise AvtoolError(f"{path} does not exist") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AvtoolError(f"{path} is not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AvtoolError(f"{path} lacks the column(s) {', '.join(missing)}: is it a CSV of `{command}`?")
    if frame.empty:
        raise AvtoolError(f"{path} has no rows")
    return frame


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: pyplot's global figure registry and backend stay untouched."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, out: Path, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi, format="png")
    return out
