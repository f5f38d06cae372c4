"""Command-line flags and ``BINBATON_*`` variables, generated from the config dataclasses.

A config declares each setting on its field (``binbaton.schemas.settings.setting``: help,
flag name, choices, parser). A ``Section`` is the flags of one config (all its settings, or
some of them); a command reads a few sections. ``add_flags`` adds one argparse option per
flag (a bool field: ``--x``, ``--x false`` or ``--no-x``); ``resolve`` takes each value from
the command line, else ``BINBATON_<FLAG>``, else the field's default, and names the flag or
variable when a value does not parse; ``Section.build`` makes the config.

This is the only module that reads the environment for settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from binbaton.schemas.settings import (
    SETTING,
    ConfigError,
    Setting,
    boolean,
    int_list,
    non_empty,
    one_of,
)

ENV_PREFIX = "BINBATON_"

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")  # a config dataclass


@dataclass(frozen=True)
class Flag:
    name: str  # "bootstrap-servers": --bootstrap-servers, $BINBATON_BOOTSTRAP_SERVERS
    field: str  # the config field it sets
    parse: Callable[[str], Any]
    default: Any  # None: unset (a required field, or one whose default is computed)
    help: str
    boolean: bool = False
    required: bool = False

    @property
    def option(self) -> str:
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


class Values(dict[str, Any]):
    """Resolved flag values by dest; ``given`` holds the dests that were set (on the command
    line, in the environment, or by ``with_``) rather than defaulted."""

    def __init__(self, values: Mapping[str, Any] | None = None, given: Iterable[str] = ()) -> None:
        super().__init__(values or {})
        self.given = set(given)

    def with_(self, **changes: Any) -> Values:
        """A copy with ``changes`` applied and counted as given."""
        return Values({**self, **changes}, self.given | changes.keys())


@dataclass(frozen=True)
class Section(Generic[C]):
    """The flags of one config dataclass.

    ``only``: some of its fields (default: every field that declares a setting).
    ``described``: for a config whose fields declare no settings (EngineConfig, which the
    engine owns): every field is a flag, described here (a missing entry gets a generic
    help text, so a field the config gains becomes a flag at once).
    ``defaults``: flag defaults that differ from the field's (``auto`` values the app
    resolves before it builds the config).
    """

    config: type[C]
    only: tuple[str, ...] = ()
    described: Mapping[str, Setting] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def part(self, *fields: str) -> Section[C]:
        return dataclasses.replace(self, only=fields)

    def flags(self) -> tuple[Flag, ...]:
        hints = typing.get_type_hints(self.config)
        flags = []
        for config_field in dataclasses.fields(self.config):
            if self.only and config_field.name not in self.only:
                continue
            declared = self._setting(config_field)
            if declared is not None:
                flags.append(self._flag(config_field, declared, hints[config_field.name]))
        return tuple(flags)

    def _setting(self, config_field: dataclasses.Field[Any]) -> Setting | None:
        if self.described is None:
            declared: Setting | None = config_field.metadata.get(SETTING)
            return declared
        generic = Setting(f"{self.config.__name__}.{config_field.name}")
        return self.described.get(config_field.name, generic)

    def _flag(self, config_field: dataclasses.Field[Any], declared: Setting, hint: Any) -> Flag:
        kind = _without_none(hint)
        if declared.parse is not None:
            parse = declared.parse
        elif declared.choices is not None:
            parse = one_of(*declared.choices)
        else:
            parse = parser_for(kind, f"{self.config.__name__}.{config_field.name}")
        plain_default = config_field.default is not dataclasses.MISSING
        has_factory = config_field.default_factory is not dataclasses.MISSING
        default = self.defaults.get(config_field.name,
                                    config_field.default if plain_default else None)
        help = declared.help
        if declared.choices is not None:
            help += f"; one of {', '.join(declared.choices)}"
        return Flag(
            name=declared.flag or config_field.name.replace("_", "-"),
            field=config_field.name,
            parse=parse,
            default=default,
            help=help,
            boolean=kind is bool,
            required=not plain_default and not has_factory,
        )

    def build(self, values: Mapping[str, Any], **fixed: Any) -> C:
        """The config from resolved ``values`` (by dest); ``fixed`` fields win."""
        flags = self.flags()
        kwargs = {f.field: values[f.dest] for f in flags if values.get(f.dest) is not None}
        kwargs.update(fixed)
        for flag in flags:
            if flag.required and flag.field not in kwargs:
                raise ConfigError(f"{flag.option} is required (or ${flag.env})")
        try:
            return self.config(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{_named(flags, str(exc)) or self.config.__name__}: {exc}") from exc


def _named(flags: Iterable[Flag], message: str) -> str:
    """The flags (and variables) whose fields a config's own error message names."""
    return ", ".join(f"{flag.option} (${flag.env})" for flag in flags
                     if re.search(rf"\b{flag.field}\b", message))


def _without_none(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return hint


def parser_for(kind: Any, where: str) -> Callable[[str], Any]:
    """The text parser of a field type that declares none."""
    if kind is bool:
        return boolean
    if kind in (int, float):
        return typing.cast(Callable[[str], Any], kind)
    if kind is str:
        return non_empty
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, Ellipsis):
        return int_list
    raise TypeError(f"{where}: no parser for {kind}; declare setting(parse=...)")


def merge(sections: Iterable[Section[Any]]) -> list[Flag]:
    """The flags of several sections, each name once (a flag two configs share, like
    ``--model``, sets both)."""
    merged: dict[str, Flag] = {}
    for section in sections:
        for flag in section.flags():
            seen = merged.setdefault(flag.name, flag)
            if seen.default != flag.default:
                raise TypeError(f"{flag.option}: two configs give it different defaults "
                                f"({seen.default!r}, {flag.default!r})")
    return list(merged.values())


class BooleanFlag(argparse.BooleanOptionalAction):
    """``--x`` (true), ``--x VALUE`` (true/false, as in the environment) or ``--no-x``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        negated = option_string is not None and option_string.startswith("--no-")
        setattr(namespace, self.dest, False if negated else True if values is None else values)


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    """One option per flag; values are resolved later (``resolve``), so the environment
    and the defaults apply to what the command line leaves unset."""
    for flag in flags:
        fallback = f", else {flag.default}" if flag.default not in (None, "") else ""
        text = f"{flag.help} (from ${flag.env}{fallback})"
        if flag.boolean:
            parser.add_argument(flag.option, dest=flag.dest, action=BooleanFlag, default=None,
                                metavar="BOOL", help=text)
        else:
            parser.add_argument(flag.option, dest=flag.dest, default=None,
                                metavar=flag.dest.upper(), help=text)


def resolve(
    given: argparse.Namespace | Mapping[str, Any],
    flags: Iterable[Flag],
    environ: Mapping[str, str] | None = None,
) -> Values:
    """Each flag's value: command line (or ``given`` mapping), else ``BINBATON_<FLAG>``, else
    its default. Text is parsed; a value that does not parse raises ConfigError naming the
    flag or variable."""
    given = vars(given) if isinstance(given, argparse.Namespace) else dict(given)
    environ = os.environ if environ is None else environ
    values = Values()
    for flag in flags:
        raw, source = given.get(flag.dest), flag.option
        if raw is None and environ.get(flag.env) is not None:
            raw, source = environ[flag.env], "$" + flag.env
        if raw is None:
            values[flag.dest] = flag.default
            continue
        values.given.add(flag.dest)
        if not isinstance(raw, str):  # already typed (--no-x, programmatic callers)
            values[flag.dest] = raw
            continue
        try:
            values[flag.dest] = flag.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    return values


def to_argv(values: Mapping[str, Any], flags: Iterable[Flag]) -> list[str]:
    """Resolved values back into ``--flag value`` pairs (for child processes)."""
    argv: list[str] = []
    for flag in flags:
        value = values.get(flag.dest)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, tuple):
            value = ",".join(map(str, value))
        argv += [flag.option, str(value)]
    return argv
