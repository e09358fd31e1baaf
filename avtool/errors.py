"""The one exception type that reaches users as a one-line message instead of a traceback."""


class AvtoolError(Exception):
    """A problem with the user's input or machine (bad path, bad metadata, full disk...).

    The CLI prints ``str(error)`` on one line and exits with status 2; anything else that escapes
    is a bug in avtool and keeps its traceback.
    """
