"""YAML configs validated into typed dataclasses.

Every config in zoomloc is a frozen dataclass; this module is the one place that turns a YAML
mapping into one. It checks what a hand-edited file gets wrong — an unknown key (a typo would
otherwise be silently ignored), a wrong type, a missing required key — and names the file and
the dotted key in a one-line :class:`~zoomloc.core.errors.ConfigError`.

A config that is another one with a few keys changed says so instead of copying it: ``base: FILE``
(relative to its folder) is read first and the file's own keys laid over it, nested mappings key by
key, anything else replaced whole. Paths the configs hold stay relative to the file that is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from zoomloc.core.errors import ConfigError, InputError

T = TypeVar("T")
BASE = "base"  # the key naming the config a file changes (see the module docstring)


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read ``path`` (laid over its ``base:`` config, if it names one) and build the dataclass ``cls`` from it
    (see :func:`from_mapping`; a mistake names the file and the ones it is laid over)."""
    data, bases = _read_mapping(Path(path), ())
    return from_mapping(cls, data, source=f"{path} (laid over {', '.join(map(str, bases))})" if bases else path)


def _read_mapping(path: Path, below: tuple[Path, ...]) -> tuple[Any, list[Path]]:
    """``path``'s YAML, laid over its base's where it names one, and its bases, nearest first; ``below``: the
    files based on it, which it may not name again."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such config file", path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    if data is None:
        return {}, []
    if not isinstance(data, Mapping) or BASE not in data:
        return data, []
    if not isinstance(data[BASE], str):
        raise ConfigError(f"{BASE}: expected a config file name, got {data[BASE]!r}", path)
    base, below = path.parent / data[BASE], (*below, path.resolve())
    if base.resolve() in below:
        raise ConfigError(f"{BASE}: {data[BASE]} is based on this file: a loop", path)
    under, bases = _read_mapping(base, below)
    return _laid_over(under, {k: v for k, v in data.items() if k != BASE}), [base, *bases]


def _laid_over(base: Any, top: Mapping) -> Any:
    """``top``'s keys laid over mapping ``base``'s: nested mappings merged key by key, other values replaced."""
    if not isinstance(base, Mapping):
        return top
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _laid_over(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) else value
    return merged


def from_mapping(cls: type[T], data: Any, source: str | Path = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, converting nested dataclasses, tuples and paths."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}", source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})", source)
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(value, hints[name], source, f"{prefix}{name}") for name, value in data.items()}
    missing = [
        n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key '{prefix}{missing[0]}'", source)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, InputError) as exc:  # __post_init__ checks of value ranges
        problem = exc.problem if isinstance(exc, InputError) else str(exc)
        raise ConfigError(f"{where}: {problem}", source) from None


def _convert(value: Any, hint: Any, source: str | Path, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"key {key!r} must be one of {', '.join(map(repr, args))}, got {value!r}", source)
        return value
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, source, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"key {key!r} must be a list, got {value!r}", source)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"key {key!r} must have {len(args)} items, got {len(value)}", source)
            items = [_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else Any
            items = [_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"key {key!r} must be {hint.__name__}, got {value!r}", source)
    return value


def non_defaults(config: Any) -> dict[str, Any]:
    """The fields of dataclass ``config`` that differ from their defaults (as ``dataclasses.asdict`` gives them).

    What a cache's name hashes of a config: a field added later, off by default, leaves the names
    of the caches built before it alone (they were made without it), instead of renaming every
    one and rebuilding hours of work. It relies on a default never changing meaning, which the
    configs keep anyway: a file that does not name a field trains as before.
    """
    given, defaults = dataclasses.asdict(config), dataclasses.asdict(type(config)())
    return {name: value for name, value in given.items() if value != defaults[name]}
