"""Validation of plain (resolved) config data into typed dataclass trees, and back.

OmegaConf loads, merges and resolves the YAML; this module checks the result against the dataclasses. It is
our own walker rather than `OmegaConf.structured` because the project's configs use types OmegaConf cannot
express (Literal choices, unions such as a number-or-schedule `float | int | Sequence[float]`) and blocks whose
class is chosen by a sibling string (`geometry_type` selects the dataclass of `geometry`). Every error names the
full key path; an unknown key also names the closest valid key.

Supported annotations: dataclasses, bool, int, float, str, Any, Literal[...], Optional / unions, list[X],
tuple[X, ...], tuple[A, B], Sequence[X], dict[str, X], pathlib.Path (kept as str).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import pathlib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal, Union

from .errors import ConfigError, closest, did_you_mean

_BLOCK = "hash3d_block"


@dataclass(frozen=True)
class BlockInfo:
    kind: str
    """Registry kind of the block (e.g. 'geometry')."""
    selector: str
    """Name of the sibling string field that selects the registered name (e.g. 'geometry_type')."""


def block(kind: str, selector: str | None = None) -> Any:
    """A config field whose dataclass is chosen by the registry entry named in a sibling field.

    `geometry: Any = block("geometry")` reads `geometry_type`; the YAML block is validated against the config
    class registered under that name. Left out of the YAML, it takes that class's defaults; with an empty
    selector it is None.
    """
    return field(default=None, metadata={_BLOCK: BlockInfo(kind, selector or f"{kind}_type")})


def block_info(cls: type, name: str) -> BlockInfo:
    for f in fields(cls):
        if f.name == name and _BLOCK in f.metadata:
            return f.metadata[_BLOCK]
    raise ConfigError(f"{cls.__name__}.{name} is not a registry block (declare it with block(...))")


_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _hints_cache:
        try:
            _hints_cache[cls] = typing.get_type_hints(cls)
        except Exception as exc:  # noqa: BLE001 - a broken annotation is a programming error worth naming
            raise TypeError(f"cannot read the type annotations of {cls.__qualname__}: {exc}") from exc
    return _hints_cache[cls]


def _where(path: str) -> str:
    return f"'{path}'" if path else "the top level"


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "anything"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if isinstance(tp, type) and is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def from_data(tp: Any, value: Any, path: str = "") -> Any:
    """Validate and convert `value` (plain YAML data) into annotation `tp`; ConfigError on any mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and is_dataclass(tp):
        return _dataclass_from_data(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        raise ConfigError(
            f"{_where(path)} must be one of {', '.join(repr(c) for c in choices)}; got {_describe(value)}"
            + did_you_mean(str(value), [str(c) for c in choices])
        )
    if origin in (Union, types.UnionType):
        return _union_from_data(tp, value, path)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{_where(path)} must be null; got {_describe(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(path)} must be a boolean (true/false); got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{_where(path)} must be an integer; got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-8' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{_where(path)} must be a number; got {_describe(value)}")
    if tp is str or tp is pathlib.Path:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{_where(path)} must be a string; got {_describe(value)}")
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path)} must be a list; got {_describe(value)}")
        return [from_data(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path)} must be a list; got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_data(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{_where(path)} must be a list of {len(args)} values; got {_describe(value)}")
        return tuple(from_data(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        args = typing.get_args(tp)
        key_tp, val_tp = args if args else (Any, Any)
        if not isinstance(value, collections.abc.Mapping):
            raise ConfigError(f"{_where(path)} must be a mapping; got {_describe(value)}")
        return {
            from_data(key_tp, k, path): from_data(val_tp, v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    raise TypeError(f"config annotation {tp!r} at {_where(path)} is not supported by hash3d.config")


def _union_from_data(tp: Any, value: Any, path: str) -> Any:
    members = typing.get_args(tp)
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(f"{_where(path)} must be {_type_name(tp)}; got null")
    # a member whose plain type is exactly the value's type wins (so 3 stays an int in `float | int`)
    ordered = sorted(members, key=lambda m: 0 if m is type(value) else 1)
    errors = []
    for member in ordered:
        if member is type(None):
            continue
        try:
            return from_data(member, value, path)
        except ConfigError as exc:
            errors.append(exc)
    # a single non-None member gives the more precise message (e.g. an unknown key inside an Optional block)
    real = [m for m in members if m is not type(None)]
    if len(real) == 1:
        raise errors[0]
    raise ConfigError(f"{_where(path)} must be {_type_name(tp)}; got {_describe(value)}")


def _nested_dataclasses(tp: Any) -> list[type]:
    """The dataclasses a field annotation holds (itself, or the members of an Optional/Union)."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return [m for m in members if isinstance(m, type) and is_dataclass(m)]


def _deeper_keys(cls: type, depth: int = 3) -> list[str]:
    """Dotted names of the fields of the blocks nested in `cls` (e.g. 'policy.probability'), `depth` levels down."""
    out: list[str] = []
    if depth == 0:
        return out
    hints = _hints(cls)
    for f in fields(cls):
        for sub in _nested_dataclasses(hints.get(f.name)):
            out += [f"{f.name}.{g.name}" for g in fields(sub) if g.init]
            out += [f"{f.name}.{k}" for k in _deeper_keys(sub, depth - 1)]
    return out


def key_hint(cls: type, key: str, path: str) -> str:
    """' — did you mean ...' for an unknown key: a close field of this block, else a close field of a nested block
    (a key written one level too high, like cache.probabilty for cache.policy.probability), by its full key."""
    hint = did_you_mean(key, [f.name for f in fields(cls) if f.init])
    if hint:
        return hint
    by_name: dict[str, str] = {}
    for dotted in _deeper_keys(cls):
        by_name.setdefault(dotted.rsplit(".", 1)[-1], dotted)
    match = closest(key, by_name)
    if match is None:
        return ""
    return f" — did you mean '{path + '.' if path else ''}{by_name[match]}'?"


def _dataclass_from_data(cls: type, value: Any, path: str) -> Any:
    if isinstance(value, cls):
        value = to_data(value)
    if value is None:
        value = {}
    if not isinstance(value, collections.abc.Mapping):
        raise ConfigError(f"{_where(path)} must be a mapping of {cls.__name__} fields; got {_describe(value)}")
    hints = _hints(cls)
    init_fields = [f for f in fields(cls) if f.init]
    known = [f.name for f in init_fields]
    for key in value:
        if key not in known:
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown config key '{full}'{key_hint(cls, str(key), path)}")
    kwargs: dict[str, Any] = {}
    blocks = [f for f in init_fields if _BLOCK in f.metadata]
    for f in init_fields:
        if f in blocks:
            continue
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in value:
            kwargs[f.name] = from_data(hints[f.name], value[f.name], sub)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"missing required config key '{sub}' ({_type_name(hints[f.name])})")
    for f in blocks:
        kwargs[f.name] = _block_from_data(cls, f, value, kwargs, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid config at {_where(path)}: {exc}") from exc


def _block_from_data(cls: type, f: dataclasses.Field, value: Any, kwargs: dict[str, Any], path: str) -> Any:
    from .registry import lookup

    info: BlockInfo = f.metadata[_BLOCK]
    sub = f"{path}.{f.name}" if path else f.name
    selector_path = f"{path}.{info.selector}" if path else info.selector
    if info.selector in kwargs:
        name = kwargs[info.selector]
    else:
        name = next((g.default for g in fields(cls) if g.name == info.selector), "")
    raw = value.get(f.name)
    if not name:
        if raw:
            raise ConfigError(f"'{sub}' is set but '{selector_path}' is empty: name the {info.kind} type to use")
        return None
    try:
        entry = lookup(info.kind, name)
    except ConfigError as exc:
        raise ConfigError(f"'{selector_path}': {exc}") from exc
    return from_data(entry.config, raw, sub)


def to_data(obj: Any) -> Any:
    """A typed config tree -> plain dicts/lists/scalars (tuples become lists), ready for YAML."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in fields(obj) if f.init}
    if isinstance(obj, collections.abc.Mapping):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    if isinstance(obj, pathlib.Path):
        return str(obj)
    return obj
