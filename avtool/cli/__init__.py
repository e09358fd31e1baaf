"""The `avtool` command line: a thin Typer layer that fills typed configs and calls the Python API."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from avtool.cli.bench import bench_app
from avtool.cli.commands import lazy_group
from avtool.cli.console import console, err_console
from avtool.cli.plot import plot_app
from avtool.cli.prep import PREP_COMMANDS
from avtool.cli.train import eval_app, train_app
from avtool.errors import AvtoolError, output_error

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _version(value: bool) -> None:
    if value:
        import avtool

        print(f"avtool {avtool.__version__}")  # also from a source checkout that pip never installed
        raise typer.Exit(0)


app = typer.Typer(
    help="Data preparation, benchmarks and training for large video models on one machine (AVION recipe).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flag names are never cut, brackets print as written
    context_settings=CONTEXT,
    cls=lazy_group(PREP_COMMANDS, order=("sample", "chunk", "bench", "train", "eval", "plot", "env")),
)
app.add_typer(bench_app, name="bench")
app.add_typer(plot_app, name="plot")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print avtool's version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Data preparation, benchmarks and training for large video models on one machine (AVION recipe)."""


def _error(message: str) -> None:
    # Escaped: messages quote user text and pip extras ('avtool[flash]') that Rich would read as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        # Outside standalone mode the exit code of typer.Exit is returned instead of exiting.
        code = app(standalone_mode=False)
    except AvtoolError as e:
        _error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # the machine's doing, not avtool's: a full or read-only disk, permissions
        _error(str(output_error(e, e.filename or "a file", verb="use")))
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors: typer's own (vendored) click exceptions
        message = " ".join(e.format_message().replace("Value error, ", "").split())
        command = getattr(getattr(e, "ctx", None), "command_path", None)
        _error(f"{message}" + (f" (see {command} --help)" if command else ""))
        sys.exit(getattr(e, "exit_code", 2) or 2)
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Versions (python, torch, av, decord, open_clip, ffmpeg), CPUs, GPUs, NVDEC and attention backends."""
    from avtool.env import collect_environment

    info = collect_environment()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        table.add_row(f"[bold]{key}", str(value))
    console.print(table)
