"""Typer commands built from config dataclasses: each ``option`` field becomes a flag (and, where it says
so, a positional argument) with its help, default, unit and panel, so a setting is defined once, in its
config. Every such command also takes ``--config FILE`` (JSON, YAML or TOML, shaped like the config.json
a run saves) and ``--print-config``. Precedence: the job's recipe defaults, then the file, then flags
given on the command line."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from avtool.errors import AvtoolError
from avtool.options import OPTION_KEY, Setting, build, coerce, config_json, resolved_dict, settings, settings_from_file

CONFIG_PANEL = "Configuration"
COMPAT_PANEL = "Accepted for AVION's commands"
PANEL_ORDER = (
    "Arguments", "Data", "Chunks", "Encoding", "Model", "Optimisation", "Evaluation", "Checkpoints", "Output",
    "Run", "Launch", COMPAT_PANEL, CONFIG_PANEL,
)  # fmt: skip


class PanelCommand(TyperCommand):
    """Plain help (no Rich: flag names are never cut and brackets print as written), options in sections
    by their panel, in PANEL_ORDER."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":  # typer would add the type: "ROOT <path>"
                record = (param.metavar or param.name.upper(), record[1])
            panel = "Arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None)
            sections.setdefault(panel or "Options", []).append(record)
        rank = {name: i for i, name in enumerate(PANEL_ORDER)}
        for name, records in sorted(sections.items(), key=lambda item: rank.get(item[0], len(rank))):
            with formatter.section(name):
                formatter.write_dl(records)


def lazy_group(factories: dict[str, Callable[[typer.Typer], None]], order: Sequence[str] = ()) -> type[TyperGroup]:
    """A group class whose commands ``factories`` add to a Typer on first use: the config classes they read
    import torch, which `avtool --version` or another command's help should not wait for. ``order``: how the
    help lists the commands (others follow)."""

    class LazyGroup(TyperGroup):
        def list_commands(self, ctx: Any) -> list[str]:
            names = [*super().list_commands(ctx), *(name for name in factories if name not in self.commands)]
            rank = {name: i for i, name in enumerate(order)}
            return sorted(names, key=lambda name: rank.get(name, len(rank)))

        def get_command(self, ctx: Any, name: str) -> Any:
            if name in factories and name not in self.commands:
                holder = typer.Typer(rich_markup_mode=None, add_completion=False)
                factories[name](holder)
                self.commands[name] = typer.main.get_command(holder)
            return super().get_command(ctx, name)

    return LazyGroup


@dataclass(frozen=True)
class Preset:
    """A flag that changes defaults, such as ``--tiny``: ``values`` by setting path."""

    help: str
    values: dict[tuple[str, ...], Any]
    panel: str = "Options"


def preset_values(prefix: tuple[str, ...], instance: Any, default: Any) -> dict[tuple[str, ...], Any]:
    """The settings in which config ``instance`` differs from ``default`` (both of one class), under ``prefix``:
    what a preset made from ``instance`` changes."""
    base = {s.path: s.default for s in settings(type(default), default)}
    return {prefix + s.path: s.default for s in settings(type(instance), instance) if base[s.path] != s.default}


@dataclass(frozen=True)
class Compat:
    """A reference-script flag avtool accepts and ignores, with the reason (shown in the help)."""

    flag: str
    help: str
    takes_value: bool = False


def _union_members(hint: Any) -> list[Any] | None:
    """The non-None members of a union type, or None for other types."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return None


def _metavar(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    members = _union_members(hint)
    if members:
        return "|".join(_metavar(m) for m in members)
    if origin is tuple:
        return _metavar(args[0])
    return {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}.get(hint, "VALUE")


def _parsed_as_text(hint: Any) -> bool:
    """Whether typer should hand the value over as text: unions of several types (``int | Literal['auto']``),
    read by ``_from_text``."""
    members = _union_members(hint)
    return members is not None and len(members) > 1


def _cli_type(hint: Any) -> Any:
    """The annotation typer parses for a setting of type ``hint`` (None allowed: "not given")."""
    members = _union_members(hint)
    if members is not None:
        return members[0] | None if len(members) == 1 else str | None
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[-1:] == (Ellipsis,):
        element = typing.get_args(hint)[0]
        # Lists take text (comma-separated items are split); the items are checked against their type after.
        return (
            list[str] | None
            if typing.get_origin(element) is not None or element in (int, float)
            else list[element] | None
        )
    return hint


def _format_default(s: Setting) -> str:
    spec = s.spec
    if spec.show_default is not None:
        text = spec.show_default
    elif s.default is None:
        text = "none"
    elif isinstance(s.default, bool):
        text = "on" if s.default else "off"
    elif isinstance(s.default, tuple):
        text = " ".join(str(v) for v in s.default) or "none"
    else:
        text = str(s.default)
    if spec.unit and s.default not in (None, "") and spec.show_default is None:
        text = f"{text} {spec.unit}"
    return text


def _param_name(s: Setting, suffix: str = "") -> str:
    return "__".join(s.path) + suffix


def _plain(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _option_param(s: Setting, also: str = "") -> inspect.Parameter:
    spec = s.spec
    unit_shown = spec.unit and s.default not in (None, "", MISSING) and spec.show_default is None
    body = f"{spec.help} Unit: {spec.unit}." if spec.unit and not unit_shown else spec.help
    help_text = body if s.required else f"{body}  [default: {_format_default(s)}{also}]"
    if s.type is bool:
        first, *aliases = spec.flags or (s.flag,)
        decls = [f"{first}/--no-{first.removeprefix('--')}", *aliases]
        info = typer.Option(*decls, help=help_text, show_default=False, rich_help_panel=spec.panel)
        return inspect.Parameter(_param_name(s), inspect.Parameter.KEYWORD_ONLY, default=bool(s.default),
                                 annotation=Annotated[bool, info])  # fmt: skip
    text = _parsed_as_text(s.type) or spec.parse is not None
    info = typer.Option(*(spec.flags or (s.flag,)), help=help_text, show_default=False,
                        metavar=spec.metavar or _metavar(s.type), rich_help_panel=spec.panel,
                        **({"parser": str} if text else {}))  # fmt: skip
    variadic = typing.get_origin(s.type) is tuple and typing.get_args(s.type)[-1:] == (Ellipsis,)
    default = None if s.required or variadic or text else s.default
    hint = str | None if text else _cli_type(s.type)
    if default is None and _union_members(hint) is None:
        hint = hint | None
    return inspect.Parameter(
        _param_name(s), inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info]
    )


def _from_text(s: Setting, value: Any) -> Any:
    """A value typer parsed as text for a union-typed setting, read as the first member type it fits (or by the
    setting's own parser)."""
    if isinstance(value, str) and s.spec is not None and s.spec.parse is not None:
        return s.spec.parse(value)
    if not isinstance(value, str) or s.type is str:
        return value
    candidates: list[Any] = [value]
    if value.lower() in ("none", "null", "all", ""):
        candidates.insert(0, None)
    for cast in (int, float):
        try:
            candidates.append(cast(value))
        except ValueError:
            pass
    for candidate in candidates:
        try:
            return coerce(candidate, s.type, s.flag)
        except AvtoolError:
            continue
    return coerce(value, s.type, s.flag)


def _list_from_text(s: Setting, value: Any) -> Any:
    """Each item of a list setting read from text as its element type (``--procs 1,2`` gives ints)."""
    if isinstance(value, list) and typing.get_origin(s.type) is tuple:
        args = typing.get_args(s.type)
        element = Setting(s.path, args[0], None, s.spec)
        return [_from_text(element, v) if isinstance(v, str) and args[0] is not str else v for v in value]
    return _from_text(s, value)


def _argument_param(s: Setting) -> inspect.Parameter:
    metavar = s.path[-1].upper()
    info = typer.Argument(help=f"{s.spec.help} (or {s.flag})", metavar=metavar, show_default=False)
    return inspect.Parameter(_param_name(s, "__arg"), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=Annotated[_cli_type(s.type) | None, info])  # fmt: skip


def _switch_params(s: Setting) -> list[inspect.Parameter]:
    out = []
    for i, (flag, _, help_text) in enumerate(s.spec.switches):
        info = typer.Option(flag, help=help_text, show_default=False, rich_help_panel=s.spec.panel)
        out.append(inspect.Parameter(_param_name(s, f"__switch{i}"), inspect.Parameter.KEYWORD_ONLY, default=False,
                                     annotation=Annotated[bool, info]))  # fmt: skip
    return out


def _compat_params(compat: Sequence[Compat]) -> list[inspect.Parameter]:
    out = []
    for i, c in enumerate(compat):
        info = typer.Option(c.flag, help=c.help, show_default=False, rich_help_panel=COMPAT_PANEL,
                            **({"metavar": "VALUE"} if c.takes_value else {}))  # fmt: skip
        annotation = Annotated[str | None, info] if c.takes_value else Annotated[bool, info]
        out.append(inspect.Parameter(f"compat__{i}", inspect.Parameter.KEYWORD_ONLY,
                                     default=None if c.takes_value else False, annotation=annotation))  # fmt: skip
    return out


def shared_flag(option_field: Callable[[], Any], hint: Any, name: str) -> tuple[Any, Any]:
    """(annotation, default) of a hand-written command's parameter for a shared option (``precision_option``,
    ``attn_option``, ...): the flag, help, unit and default of its one definition."""
    f = option_field()
    s = Setting((name,), hint, f.default, f.metadata[OPTION_KEY])
    param = _option_param(s)
    return param.annotation, param.default


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def cli_settings(cls: type, exclude: Collection[str] = ()) -> list[Setting]:
    """The settings of ``cls`` that have flags (less the keys in ``exclude``)."""
    return [s for s in settings(cls) if s.spec is not None and s.spec.cli and s.key not in exclude]


def _split_lists(s: Setting, value: Any) -> Any:
    """A list setting's values, each of which may be comma-separated (``--procs 1,2,4``)."""
    if isinstance(value, list) and typing.get_origin(s.type) is tuple:
        return [part.strip() if isinstance(part, str) else part for item in value
                for part in (item.split(",") if isinstance(item, str) else [item]) if part != ""]  # fmt: skip
    return value


def command_values(
    cls: type, ctx: typer.Context, params: dict[str, Any], exclude: Collection[str] = ()
) -> dict[tuple[str, ...], Any]:
    """The settings of ``cls`` given on this command line (positionally, by flag or by switch)."""
    values: dict[tuple[str, ...], Any] = {}
    for s in cli_settings(cls, exclude):
        given: list[tuple[str, Any]] = []
        if s.spec.positional and params.get(_param_name(s, "__arg")) is not None:
            given.append((s.path[-1].upper(), params[_param_name(s, "__arg")]))
        if _given(ctx, _param_name(s)):
            given.append((s.flag, params[_param_name(s)]))
        for i, (flag, value, _) in enumerate(s.spec.switches):
            if params.get(_param_name(s, f"__switch{i}")):
                given.append((flag, value))
        if not given:
            continue
        read = [(name, coerce(_list_from_text(s, _split_lists(s, value)), s.type, name)) for name, value in given]
        if len({repr(v) for _, v in read}) > 1:
            raise AvtoolError(f"{' and '.join(name for name, _ in read)} give different values for {s.flag}")
        values[s.path] = read[0][1]
    return values


def _missing(cls: type, values: dict[tuple[str, ...], Any]) -> list[Setting]:
    return [s for s in settings(cls) if s.required and s.path not in values]


def _missing_message(missing: list[Setting]) -> str:
    names = [f"{s.path[-1].upper()} ({s.flag})" if s.spec and s.spec.positional else s.flag for s in missing]
    return f"missing {', '.join(names)}"


def config_command(
    app: typer.Typer,
    name: str,
    config_cls: type,
    run: Callable[..., None],
    *,
    help: str,
    extras: dict[str, type] | None = None,
    compat: Sequence[Compat] = (),
    presets: dict[str, Preset] | None = None,
    exclude: Collection[str] = (),
    mirror: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Add command ``name`` to ``app``: its flags come from ``config_cls``'s settings (and from each of
    ``extras``, configs taken from the command line only, such as the launch settings); it calls
    ``run(cfg, **extra_configs)`` with the resolved configs.

    ``presets``: flags that change defaults (``--tiny``), below the config file and the other flags.
    ``exclude``: settings without a flag here (keys such as ``model.video.arch``). ``mirror``: a flag's value
    also goes to these other settings (one ``--fused-mlp`` for both towers)."""
    extras, presets, mirror = extras or {}, presets or {}, mirror or {}
    own = cli_settings(config_cls, exclude)
    params = [_argument_param(s) for s in own if s.spec.positional]
    for s in own:
        changed = [(flag, p.values[s.path]) for flag, p in presets.items() if s.path in p.values]
        params.append(_option_param(s, "".join(f"; {flag}: {_plain(v)}" for flag, v in changed)))
        params.extend(_switch_params(s))
    for i, (flag, preset) in enumerate(presets.items()):
        info = typer.Option(flag, help=preset.help, show_default=False, rich_help_panel=preset.panel)
        params.append(inspect.Parameter(f"preset__{i}", inspect.Parameter.KEYWORD_ONLY, default=False,
                                        annotation=Annotated[bool, info]))  # fmt: skip
    for key, cls in extras.items():
        for s in cli_settings(cls):
            params.append(_option_param(Setting((key, *s.path), s.type, s.default, s.spec)))
    params += _compat_params(compat)
    config_info = typer.Option(
        "--config", metavar="FILE", rich_help_panel=CONFIG_PANEL,
        help="A JSON, YAML or TOML file of settings (a run's config.json works); flags given here override it.",
    )  # fmt: skip
    print_info = typer.Option("--print-config", help="Print the resolved configuration as JSON and exit.",
                              rich_help_panel=CONFIG_PANEL)  # fmt: skip
    params += [
        inspect.Parameter("config__file", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Path | None, config_info]),
        inspect.Parameter("config__print", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, print_info]),
    ]  # fmt: skip

    def callback(ctx: typer.Context, **kwargs: Any) -> None:
        values: dict[tuple[str, ...], Any] = {}
        for i, preset in enumerate(presets.values()):
            if kwargs[f"preset__{i}"]:
                values.update(preset.values)
        if kwargs["config__file"]:
            values.update(settings_from_file(config_cls, kwargs["config__file"]))
        given = command_values(config_cls, ctx, kwargs, exclude)
        for source, targets in mirror.items():
            if tuple(source.split(".")) in given:
                given.update({tuple(t.split(".")): given[tuple(source.split("."))] for t in targets})
        values.update(given)
        missing = _missing(config_cls, values)
        if kwargs["config__print"]:
            if missing:
                print(config_json(resolved_dict(config_cls, values)))
                raise AvtoolError(f"incomplete configuration: {_missing_message(missing)}")
            print(config_json(build(config_cls, values)))
            return
        if missing:
            raise AvtoolError(_missing_message(missing))
        cfg = build(config_cls, values)
        extra_cfgs = {}
        for key, cls in extras.items():
            extra_values = {s.path: coerce(_from_text(s, kwargs[_param_name(Setting((key, *s.path), s.type, s.default,
                            s.spec))]), s.type, s.flag) for s in cli_settings(cls)}  # fmt: skip
            extra_cfgs[key] = build(cls, extra_values)
        run(cfg, **extra_cfgs)

    context = typer.Context
    callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=context), *params]
    )
    callback.__annotations__ = {"ctx": context, **{p.name: p.annotation for p in params}}
    callback.__doc__ = help
    callback.__name__ = name.replace("-", "_")
    app.command(name, cls=PanelCommand, help=help)(callback)
