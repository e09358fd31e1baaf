"""Collect every problem found in a metadata file, then fail once with all of them on one line."""

from __future__ import annotations

from avtool.errors import AvtoolError

_SHOWN = 5


class Problems:
    """Counts every problem and keeps the first few messages (a broken file may have millions)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.shown: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.shown) < _SHOWN:
            self.shown.append(message)

    def __bool__(self) -> bool:
        return self.count > 0

    def raise_if_any(self) -> None:
        """AvtoolError ``source: N problem(s): first; second; … and K more``."""
        if not self.count:
            return
        more = f"; and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        raise AvtoolError(f"{self.source}: {self.count} problem(s): {'; '.join(self.shown)}{more}")
