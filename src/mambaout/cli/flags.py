"""Command-line flags generated from a configuration dataclass, so a flag and its recipe key cannot drift apart.

Every field whose metadata has ``help`` (see :func:`mambaout.engine.config.setting`) becomes ``--name-with-dashes``
(or its ``flag``): typed from the annotation (``Optional`` unwrapped, a bool a switch, a tuple one value per
item), its help text the field's own with ``{unit}`` filled in and the default shown. Every flag defaults to
None, which :func:`mambaout.engine.config.resolve_config` reads as "not given", so the precedence stays
defaults < recipe < flags. Values are checked where recipe values are, by the configuration, so a bad value gets
the same message from either; the message then names the flag too.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, get_args, get_origin, get_type_hints


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags: those with help; valued ones first, then the switches."""
    hints = get_type_hints(cls)
    found = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    return sorted(found, key=lambda f: _kind(hints[f.name])[0] is bool)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _kind(hint: Any) -> tuple[type, int | None]:
    """(the value type, number of values or None for one) of a field annotation."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if type(None) in get_args(hint) and args:  # Optional[X] / X | None
        hint = args[0]
    if get_origin(hint) is tuple:
        items = get_args(hint)
        return items[0], len(items)
    return hint, None


def _default_text(f: dataclasses.Field) -> str | None:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return f.metadata.get("unset")
    if isinstance(value, bool) or value == "":
        return None
    if isinstance(value, (tuple, list)):  # as typed on the command line: one value per item, 1.33333 not 4/3's digits
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def flag_help(f: dataclasses.Field, cls: type) -> str:
    """The help text of a field's flag: its help with ``{unit}`` filled in, and the default (not of a switch)."""
    text = f.metadata["help"].replace("{unit}", cls.unit)
    shown = _default_text(f)
    return text if shown is None else f"{text} (default: {shown})"


def add_config_flags(parser: argparse.ArgumentParser, cls: type,
                     types: dict[str, Callable[[str], Any]] | None = None) -> None:
    """A flag on ``parser`` for each of :func:`flag_fields`; ``types`` gives a field a value type of its own."""
    hints = get_type_hints(cls)
    for f in flag_fields(cls):
        kind, count = _kind(hints[f.name])
        help_text = flag_help(f, cls).replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag_name(f), dest=f.name, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(flag_name(f), dest=f.name, type=(types or {}).get(f.name, kind), nargs=count,
                            default=None, help=help_text)


def config_from_flags(args: argparse.Namespace, cls: type, recipe: str | None = None):
    """The configuration of the parsed flags: ``cls``'s defaults, then the recipe (``--recipe``, else
    ``recipe``), then the flags given. A flag's ``off`` word (``--auto-augment none``) clears its setting."""
    from ..engine.config import ConfigError, replace, resolve_config

    overrides, cleared = {}, {}
    for f in flag_fields(cls):
        value = getattr(args, f.name, None)
        if "off" in f.metadata and value in (f.metadata["off"], ""):
            cleared[f.name], value = None, None  # None here means "not given"; cleared once resolved
        overrides[f.name] = value
    try:
        cfg = resolve_config(overrides, recipe=recipe, cls=cls)
        return replace(cfg, **cleared) if cleared else cfg
    except ConfigError as e:
        flags = {f.name: flag_name(f) for f in flag_fields(cls)}
        if e.setting not in flags:
            raise
        raise ConfigError(f"{e} ({flags[e.setting]})", e.setting) from None


__all__ = ["add_config_flags", "config_from_flags", "flag_fields", "flag_help", "flag_name"]
