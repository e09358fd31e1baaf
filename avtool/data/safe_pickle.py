"""Metadata pickles are untrusted input: unpickled by an unpickler that builds only what the formats hold.

LaViLa's narration pickles are lists of tuples of strings and numbers; EK-100's relevancy pickles are NumPy
arrays of numbers. Python's ``pickle.load`` would call whatever a file names (a row whose ``__reduce__`` is
``os.system`` runs a command while the file is read), so this unpickler admits no global beyond the few that
rebuild NumPy arrays and plain containers, and refuses the rest by name, before anything is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from avtool.errors import AvtoolError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # NumPy arrays, dtypes and scalars, in NumPy 1's and 2's module names (arrays of objects rebuild their
        # elements through this unpickler too, so they get no further).
        *(
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        ),  # fmt: skip
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol 2 writes bytes (an array's buffer) as codecs.encode(text, "latin1")
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
    }
)
"""(module, name) pairs a metadata pickle may name."""


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable or class outside ``ALLOWED_GLOBALS``."""


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path, kind: str) -> object:
    """Unpickle a metadata file safely; a missing, unreadable or refused one is a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f).load()
    except FileNotFoundError:
        raise AvtoolError(f"{path}: no such {kind} file") from None
    except IsADirectoryError:
        raise AvtoolError(f"{path}: a folder, not a {kind} file") from None
    except RefusedGlobal as e:
        raise AvtoolError(
            f"{path}: refused to load this {kind} pickle: it names {e}, which a {kind} file never holds "
            "(only lists, tuples, strings, numbers and NumPy arrays are read; nothing in it was run)"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError, IndexError) as e:
        raise AvtoolError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
