"""The one exception type that reaches users as a one-line message instead of a traceback."""


class AvtoolError(Exception):
    """A problem with the user's input or machine (bad path, bad metadata, full disk...).

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``; anything else that escapes
    is a bug in avtool and keeps its traceback.
    """

    exit_code = 2


class OutputError(AvtoolError):
    """The output side failed (read-only or full destination): status 1, as a run that could not finish."""

    exit_code = 1


def output_error(error: OSError, where: str, verb: str = "write") -> OutputError:
    """An OSError while writing (or, with ``verb``, otherwise using) ``where`` as one line with what to do."""
    reason = error.strerror or str(error)
    hint = {28: "free space and rerun to resume", 30: "choose a writable destination",
            13: "choose a destination you may write to"}.get(error.errno or 0, "")  # fmt: skip
    return OutputError(f"cannot {verb} {where}: {reason}" + (f"; {hint}" if hint else ""))


def config_error(error: Exception, context: str = "") -> AvtoolError:
    """A config error whose message lists one problem per indented line (as `problems()` raise), as one line."""
    head, _, rest = str(error).partition(":\n")
    problems = [line.strip() for line in rest.splitlines() if line.strip()]
    message = f"{head}: {'; '.join(problems)}" if problems else " ".join(str(error).split())
    return AvtoolError(f"{context}{message}")
