"""One definition of each setting: a config dataclass field declares, once, its default, help, unit,
command-line flags and help panel (``option``). The command line builds its parameters from those
fields (``avtool.cli.commands``), config files fill the same fields by name (``settings_from_file``),
and the Python API gets the same defaults by constructing the dataclass.

A config is a tree of frozen dataclasses. A field whose type is a dataclass and that carries no
``option`` is a group: its settings are the fields of that dataclass, and its default instance (the
field's default factory) holds the job's recipe defaults, e.g. ``MIRConfig.run`` defaults to 100 epochs
of 64 clips while ``RunConfig`` alone says 5 epochs of 256. Every other field is a setting; those
without an ``option`` are settable from config files but have no flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, Union

from avtool.errors import AvtoolError

OPTION_KEY = "avtool.option"
"""Where a field's OptionSpec lives in its metadata."""


@dataclass(frozen=True)
class OptionSpec:
    """How a setting appears on the command line."""

    help: str
    """One or two sentences; the unit goes in ``unit``, the default is shown from the field."""
    flags: tuple[str, ...] = ()
    """Flag names, the first canonical; default: ``--field-name``. Further names are aliases (AVION's
    spellings); a boolean gets ``--no-<first>`` as its off switch."""
    unit: str | None = None
    """Unit shown after the default, e.g. ``s``, ``MB/s``, ``clips``."""
    panel: str = "Options"
    """Help section the flag is listed in."""
    positional: bool = False
    """Also accepted as a positional argument (in field order), e.g. ``avtool train lavila ROOT METADATA``."""
    metavar: str | None = None
    """Placeholder of the value in the help (default from the type: INT, FLOAT, PATH, TEXT, choices)."""
    show_default: str | None = None
    """Text for the default where the value itself would mislead (e.g. ``all cores`` for 0)."""
    switches: tuple[tuple[str, Any, str], ...] = ()
    """(flag, value, help) triples: flags without a value that set this setting to ``value``, such as AVION's
    ``--fused-decode-crop`` for ``--decode-mode fused``."""
    cli: bool = True
    """False: config files and the API only."""
    parse: Callable[[str], Any] | None = None
    """Reads the flag's text into the setting's type (``--shard 3/16``); config files give the value itself."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    flags: tuple[str, ...] | str = (),
    unit: str | None = None,
    panel: str = "Options",
    positional: bool = False,
    metavar: str | None = None,
    show_default: str | None = None,
    switches: tuple[tuple[str, Any, str], ...] = (),
    default_factory: Any = MISSING,
    cli: bool = True,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see ``OptionSpec`` for the arguments)."""
    spec = OptionSpec(
        help=help, flags=(flags,) if isinstance(flags, str) else tuple(flags), unit=unit, panel=panel,
        positional=positional, metavar=metavar, show_default=show_default, switches=switches, cli=cli, parse=parse,
    )  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata={OPTION_KEY: spec})


@dataclass(frozen=True)
class Setting:
    """One leaf of a config tree: where it is, its type, its default in this tree and its option."""

    path: tuple[str, ...]
    type: Any
    default: Any
    """The recipe default (MISSING: required)."""
    spec: OptionSpec | None

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def flag(self) -> str:
        return self.spec.flags[0] if self.spec and self.spec.flags else "--" + self.path[-1].replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _is_group(f: dataclasses.Field, hint: Any) -> bool:
    return OPTION_KEY not in f.metadata and isinstance(hint, type) and dataclasses.is_dataclass(hint)


def settings(cls: type, default: Any = None, prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every setting of config class ``cls``, depth first in field order; defaults from ``default`` (an
    instance of ``cls``, the recipe) where given, else from the fields."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        value = getattr(default, f.name) if default is not None else _field_default(f)
        if _is_group(f, hints[f.name]):
            yield from settings(hints[f.name], None if value is MISSING else value, path)
        else:
            yield Setting(path, hints[f.name], value, f.metadata.get(OPTION_KEY))


def build(cls: type, values: dict[tuple[str, ...], Any], default: Any = None, prefix: tuple[str, ...] = ()) -> Any:
    """An instance of ``cls``: ``values`` (by path) over the recipe defaults. Raises AvtoolError for
    missing required settings and for what the dataclasses refuse."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        inherited = getattr(default, f.name) if default is not None else MISSING
        if _is_group(f, hints[f.name]):
            if any(key[: len(path)] == path for key in values):
                base = inherited if inherited is not MISSING else _field_default(f)
                kwargs[f.name] = build(hints[f.name], values, None if base is MISSING else base, path)
            elif inherited is not MISSING:
                kwargs[f.name] = inherited
        elif path in values:
            kwargs[f.name] = values[path]
        elif inherited is not MISSING:
            kwargs[f.name] = inherited
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise AvtoolError(f"{cls.__name__}: {e}") from None
    except ValueError as e:
        raise AvtoolError(" ".join(str(e).split())) from None


def resolved_dict(cls: type, values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested dict ``build`` would construct, with None where a required setting is missing (for
    --print-config of an incomplete command)."""
    out: dict[str, Any] = {}
    for s in settings(cls):
        node = out
        for name in s.path[:-1]:
            node = node.setdefault(name, {})
        value = values.get(s.path, s.default)
        node[s.path[-1]] = None if value is MISSING else to_jsonable(value)
    return out


def config_json(config: Any) -> str:
    """A config (nested dataclasses, or their dict) as indented JSON: what runs save as config.json and
    what ``--config`` reads back."""
    return json.dumps(to_jsonable(config), indent=2, default=str)


def to_jsonable(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, paths as strings: what JSON, YAML and TOML can hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---- values from config files and from the command line ----


def type_name(hint: Any) -> str:
    """How a value of ``hint`` is described in an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        return "a list of " + (type_name(args[0]) if args[-1] is Ellipsis else f"{len(args)} values")
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` (from JSON/YAML/TOML, or the command line) as type ``hint``, or a one-line AvtoolError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return coerce(value, member, where)
            except AvtoolError:
                continue
    elif origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis:
                return tuple(coerce(v, args[0], where) for v in value)
            if len(value) == len(args):
                return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return build(hint, values_from_dict(hint, value, where))
    raise AvtoolError(f"{where}: expected {type_name(hint)}, got {value!r}")


def values_from_dict(cls: type, data: dict[str, Any], source: str) -> dict[tuple[str, ...], Any]:
    """Settings by path from a nested dict shaped like the config (what config.json holds). At the top
    level a setting may also be named by its flag (``batch-size`` or ``batch_size`` for ``run.batch_size``).
    Unknown names are errors, with the closest known names."""
    all_settings = list(settings(cls))
    by_path = {s.path: s for s in all_settings}
    groups = {s.path[:i] for s in all_settings for i in range(1, len(s.path))}
    by_flag: dict[str, Setting] = {}
    for s in all_settings:
        if s.spec is not None and s.spec.cli:
            for flag in s.spec.flags or (s.flag,):
                by_flag[flag.lstrip("-").replace("-", "_")] = s
    values: dict[tuple[str, ...], Any] = {}

    def visit(node: dict[str, Any], prefix: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            raise AvtoolError(f"{source}: {'.'.join(prefix) or 'the file'} must be a table of settings")
        for key, value in node.items():
            path = (*prefix, str(key))
            where = f"{source}: {'.'.join(path)}"
            if path in by_path:
                values[path] = coerce(value, by_path[path].type, where)
            elif path in groups:
                visit(value, path)
            elif not prefix and str(key).replace("-", "_") in by_flag:
                setting = by_flag[str(key).replace("-", "_")]
                values[setting.path] = coerce(value, setting.type, where)
            else:
                known = [".".join(p) for p in by_path if p[: len(prefix)] == prefix]
                known += list(by_flag) if not prefix else []
                close = difflib.get_close_matches(".".join(path), known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise AvtoolError(f"{where}: unknown setting{hint}")

    visit(data, ())
    return values


def read_settings_file(path: Path) -> dict[str, Any]:
    """The nested dict of a JSON, YAML or TOML config file (by its suffix)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise AvtoolError(f"--config {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            raise AvtoolError(f"--config {path}: use a .json, .yaml, .yml or .toml file")
    except AvtoolError:
        raise
    except Exception as e:  # each parser has its own error type; all are the file's fault
        raise AvtoolError(f"--config {path}: not valid {suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise AvtoolError(f"--config {path}: expected a table of settings at the top")
    return data


def settings_from_file(cls: type, path: Path) -> dict[tuple[str, ...], Any]:
    """Settings by path from config file ``path`` for config class ``cls``: a config file, a run's config.json,
    or a benchmark's result JSON (``avtool.results``: its ``config`` is what made the rows)."""
    data = read_settings_file(path)
    if {"config", "rows", "env"} <= set(data) and isinstance(data["config"], dict):
        data = data["config"]
    return values_from_dict(cls, data, str(path))
