"""The consoles every command prints to: results on stdout, errors and failure tables on stderr."""

import os
import sys

from rich.console import Console

# Piped into a log file, Rich assumes 80 columns and cuts table cells short ("decod…"); a log has no
# width to respect, so it gets wide tables. A terminal, or COLUMNS, sets the width as usual.
LOG_WIDTH = 160


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else LOG_WIDTH
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)
