"""Text for millions of clips without millions of Python objects.

Data-loader workers fork the dataset; touching a Python string in a worker writes its reference
count and copies its memory page, so a list of 4M narrations slowly duplicates into every worker.
Packing the text into one numpy buffer with offsets keeps it shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class StringTable:
    """Row i holds a list of strings (one narration, or LaViLa's paraphrases)."""

    def __init__(self, rows: Sequence[Sequence[str]]) -> None:
        encoded = [[s.encode() for s in row] for row in rows]
        lengths = np.array([len(s) for row in encoded for s in row], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(s for row in encoded for s in row), dtype=np.uint8).copy()
        self._string_starts = np.concatenate([[0], np.cumsum(lengths)])
        self._row_starts = np.concatenate([[0], np.cumsum([len(row) for row in encoded])]).astype(np.int64)

    def __len__(self) -> int:
        return len(self._row_starts) - 1

    def row(self, i: int) -> list[str]:
        first, last = self._row_starts[i], self._row_starts[i + 1]
        return [
            self._buffer[self._string_starts[k] : self._string_starts[k + 1]].tobytes().decode()
            for k in range(first, last)
        ]
