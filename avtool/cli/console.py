"""The consoles every command prints to: results on stdout, errors and failure tables on stderr."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
