"""Settings: one frozen dataclass per group, each field declared once with its default, unit,
help text and bounds.

A field declared with `setting(...)` carries everything a user-facing tool needs, so that a
default is written in exactly one place:
- `check(obj)` (called from each group's `__post_init__`) enforces the bounds, raising
  `NeoError` that names the field;
- `add_arguments(parser, cls)` generates the command-line flags of a group (nested groups
  included) with their defaults, units and help;
- `from_args(cls, namespace)` and `build(cls, **flat)` build a group from parsed flags or from
  flat `name=value` settings (a sweep grid, `LLM(...)` keyword arguments), routing every name
  to the group that owns it; `flatten(obj)` is the inverse.

Flat names are unique across the groups nested in one class (`names` checks), so a flag, a
grid key and a keyword argument all mean the same field. Pure Python: the scheduler's config
uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from neo_sim.errors import NeoError


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    unit: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    renamed: Mapping[str, str] | None = None,
    cli: bool = True,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with the metadata the tools read.

    `low`/`high` bound the value (`low_open`: strictly above `low`); None values skip the check
    (an optional setting left unset). `flag` names the command-line flag when it should differ
    from the field name; `parse` turns the flag's text into a value; `renamed` maps former
    values of a `choices` setting to their new names, for the error that refuses them;
    `cli=False` keeps the field off the command line (it is set by code, not users). `aliases`
    are other names the setting answers to, as a flat name and as a flag: vLLM's, where the
    meaning is the same.
    """
    metadata = {
        "help": help,
        "unit": unit,
        "low": low,
        "high": high,
        "low_open": low_open,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "renamed": renamed,
        "cli": cli,
        "aliases": aliases,
    }
    return dataclasses.field(default=default, metadata=metadata)


# ---- validation ---------------------------------------------------------------------------------
def bound_error(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` breaks the bounds of field `f`, or None if it does not."""
    meta = f.metadata
    if value is None or not meta:
        return None
    if isinstance(value, float) and math.isnan(value):
        return f"must be a number, got {value}"
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        return f"must be {'>' if meta.get('low_open') else '>='} {low:g}, got {value}"
    if high is not None and value > high:
        return f"must be <= {high:g}, got {value}"
    choices = meta.get("choices")
    if choices and value not in choices:
        renamed = meta.get("renamed") or {}
        if value in renamed:
            return f"{value!r} is now named {renamed[value]!r}"
        return f"must be one of {', '.join(choices)}, got {value!r}"
    return None


def check(obj: Any, label: str | None = None) -> None:
    """Raise NeoError naming the first field of `obj` outside its bounds."""
    for f in dataclasses.fields(obj):
        problem = bound_error(f, getattr(obj, f.name))
        if problem:
            raise NeoError(f"{label or type(obj).__name__}: {f.name} {problem}")


# ---- introspection ------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint: Any) -> Any:
    """`int | None` -> int; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def group_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, its unwrapped type) of a settings class, nested groups included as such."""
    hints = _hints(cls)
    return [(f, _unwrap_optional(hints[f.name])) for f in dataclasses.fields(cls)]


def names(cls: type) -> dict[str, tuple[str, ...]]:
    """Every flat setting name of `cls` -> its path through nested groups.

    A field whose flag differs from its name (`num_gpu_blocks`, flag `--gpu-kv-blocks`) is
    also known by the flag's name (`gpu_kv_blocks`). Raises if two nested groups define the
    same name (flat names would be ambiguous).
    """
    out: dict[str, tuple[str, ...]] = {}

    def add(name: str, path: tuple[str, ...]) -> None:
        if name in out:
            raise TypeError(f"{cls.__name__}: setting {name!r} is defined twice")
        out[name] = path

    for f, kind in group_fields(cls):
        if dataclasses.is_dataclass(kind):
            for name, path in names(kind).items():
                add(name, (f.name, *path))
            continue
        add(f.name, (f.name,))
        alias = (f.metadata.get("flag") or "").replace("-", "_")
        if alias and alias != f.name:
            add(alias, (f.name,))
        for alias in f.metadata.get("aliases", ()):
            add(alias, (f.name,))
    return out


def flatten(obj: Any) -> dict[str, Any]:
    """Flat `name -> value` of a settings object and its nested groups."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flatten(value))
        else:
            out[f.name] = value
    return out


def build(cls: type, values: Mapping[str, Any] | None = None, /, **flat: Any) -> Any:
    """An instance of `cls` from flat settings routed to their groups; NeoError on unknown names.

    A nested group may also be given whole, under its field name (`scheduler=SchedulerConfig(..)`);
    flat settings given beside it override its fields.
    """
    known = names(cls)
    groups = {f.name for f, kind in group_fields(cls) if dataclasses.is_dataclass(kind)}
    canonical: dict[str, Any] = {}
    for key, value in {**(values or {}), **flat}.items():
        if key in groups:
            canonical[key] = value
        elif key in known:
            canonical[known[key][-1]] = value
        else:
            raise NeoError(
                f"{cls.__name__}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
            )
    return _build(cls, canonical)


def _build(cls: type, flat: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f, kind in group_fields(cls):
        if dataclasses.is_dataclass(kind):
            inner = {n: flat[n] for n in _leaf_names(kind) if n in flat}
            base = flat[f.name] if f.name in flat else _default_of(f)
            if base is None:
                kwargs[f.name] = _build(kind, inner)
            else:
                kwargs[f.name] = _build(kind, flatten(base) | inner) if inner else base
        elif f.name in flat:
            kwargs[f.name] = flat[f.name]
    return cls(**kwargs)


def _leaf_names(cls: type) -> set[str]:
    return {path[-1] for path in names(cls).values()}


def replace(obj: Any, **flat: Any) -> Any:
    """A copy of `obj` with flat settings changed, wherever in its groups they live."""
    return build(type(obj), flatten(obj) | flat)


# ---- command line -------------------------------------------------------------------------------
def flag_of(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))


def _argparse_type(f: dataclasses.Field, kind: Any) -> Callable[[str], Any]:
    parse = f.metadata.get("parse") or kind
    noun = {int: "an integer", float: "a number"}.get(parse, "a value")

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, NeoError) as exc:
            detail = str(exc) if isinstance(exc, NeoError) else f"expected {noun}, got {text!r}"
            raise argparse.ArgumentTypeError(detail) from None
        problem = bound_error(f, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def _help(f: dataclasses.Field, rule: str | None = None) -> str:
    unit = f.metadata.get("unit")
    if rule is not None:
        tail = f"unset: {rule}"
    elif f.default is dataclasses.MISSING:
        tail = "required"
    elif f.default is None:
        tail = "optional"
    else:
        shown = "inf" if isinstance(f.default, float) and math.isinf(f.default) else f.default
        tail = f"default {shown}"
    return f"{f.metadata.get('help', '')} ({unit + '; ' if unit else ''}{tail})"


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    defaults: Any | None = None,
    rules: Mapping[str, str] | None = None,
) -> None:
    """Add a flag for every user-facing field of `cls` (nested groups included).

    `defaults`, an instance of `cls`, supplies the defaults shown and used instead of the
    class's (a tool whose own defaults differ, stated where that instance is made). `rules`
    names fields whose default the tool works out itself (field name -> the rule, in words for
    the help): their flags default to None, which the tool replaces before `from_args`.
    """
    rules = rules or {}
    for f, kind in group_fields(cls):
        if f.name in skip:
            continue
        current = getattr(defaults, f.name) if defaults is not None else _default_of(f)
        if dataclasses.is_dataclass(kind):
            title = (kind.__doc__ or kind.__name__).strip().splitlines()[0]
            group = (
                parser.add_argument_group(f"{f.name} settings: {title}")
                if isinstance(parser, argparse.ArgumentParser)
                else parser
            )
            add_arguments(group, kind, skip, current, rules)
            continue
        if not f.metadata.get("cli", False):
            continue
        if defaults is not None:
            f = _with_default(f, getattr(defaults, f.name))
        flag = flag_of(f)
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(f, rules.get(f.name))}
        if kind is not bool:
            kwargs["metavar"] = flag[2:].upper().replace("-", "_")
        if f.name in rules:
            kwargs["default"] = None
        elif f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argparse_type(f, kind)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        known_as = (f.name, *f.metadata.get("aliases", ()))
        flags = dict.fromkeys((flag, *("--" + n.replace("_", "-") for n in known_as)))
        parser.add_argument(*flags, **kwargs)


def _default_of(f: dataclasses.Field) -> Any:
    """A field's default value (its factory called), or None for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _with_default(f: dataclasses.Field, default: Any) -> dataclasses.Field:
    clone = dataclasses.field(default=default, metadata=f.metadata)
    clone.name = f.name
    return clone


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of `cls` from parsed flags (fields without a flag keep their defaults)."""
    present = {n: getattr(args, n) for n in names(cls) if hasattr(args, n)}
    return build(cls, present | overrides)
