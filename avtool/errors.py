"""The one exception type that reaches users as a one-line message instead of a traceback."""


class AvtoolError(Exception):
    """A problem with the user's input or machine (bad path, bad metadata, full disk...).

    The CLI prints ``str(error)`` on one line and exits with status 2; anything else that escapes
    is a bug in avtool and keeps its traceback.
    """


def config_error(error: Exception, context: str = "") -> AvtoolError:
    """A config error whose message lists one problem per indented line (as `problems()` raise), as one line."""
    head, _, rest = str(error).partition(":\n")
    problems = [line.strip() for line in rest.splitlines() if line.strip()]
    message = f"{head}: {'; '.join(problems)}" if problems else " ".join(str(error).split())
    return AvtoolError(f"{context}{message}")
