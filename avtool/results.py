"""Write a benchmark's rows as CSV and JSON, stamped with the environment and the config that made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from avtool.atomic import atomic_write_text
from avtool.env import collect_environment
from avtool.options import to_jsonable


def write_results(
    out_dir: Path, name: str, rows: list[dict], config: Any, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """``out_dir/name.csv`` (one flat row per measurement) and ``out_dir/name.json`` (rows, config
    and environment, and ``extra``'s keys: what does not fit a flat row). Returns both paths."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    record = {
        "name": name,
        "env": collect_environment(),
        "config": to_jsonable(config),
        "rows": to_jsonable(rows),
        **to_jsonable(extra or {}),
    }
    atomic_write_text(json_path, json.dumps(record, indent=2))
    return csv_path, json_path
