"""Rules for one key of a foreign file that is not a key of ours: each reads the value and records a verdict.

A rule is `rule(ctx, key, value, block)`: `key` is the full path as written, `block` the mapping the key sits in
(as written, before any rule ran). Rules write into the tree only through `ctx.put` / `ctx.put_default`, so a key the
file sets in our own spelling always wins and a clash between two spellings is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .report import Report
from .schedules import c_max, is_schedule

_MISSING = object()


def get_path(tree: Mapping[str, Any], path: str, default: Any = _MISSING) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(path)
            return default
        node = node[part]
    return node


def has_path(tree: Mapping[str, Any], path: str) -> bool:
    missing = object()
    return get_path(tree, path, missing) is not missing


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class Context:
    root: dict[str, Any]
    """The tree being translated (mutated in place)."""
    written: dict[str, Any]
    """The tree as the file (and overrides) wrote it, for rules that compare with another key."""
    report: Report
    pending: list[tuple[str, Any, str]] = field(default_factory=list)
    """Upstream defaults (path, value, why), filled in at the end if the file turns out to be foreign."""

    def put(self, path: str, value: Any, key: str, detail: str = "") -> None:
        """Set `path` for the foreign `key`, unless the file (or a command-line override) sets `path` itself in our
        spelling: that more specific key wins, and the foreign one is listed as having no effect."""
        if has_path(self.written, path) and get_path(self.written, path) != value:
            own = get_path(self.written, path)
            self.report.add(key, "no effect", f"would set {path}={value!r}, but {path}={own!r} is given and wins")
            return
        set_path(self.root, path, value)
        self.report.add(key, "mapped", detail or f"-> {path} = {value!r}")

    def put_default(self, path: str, value: Any, why: str) -> None:
        self.pending.append((path, value, why))

    def refuse(self, key: str, fix: str) -> None:
        self.report.add(key, "refused", fix)


Rule = Callable[[Context, str, Any, Mapping[str, Any]], None]


def also_ours(rule: Rule, drop: bool = False) -> Rule:
    """Mark a rule for a key that is also one of ours but means something else in this upstream system (e.g. an
    optimizer block the system does not use): the rule's verdict is recorded instead of 'as is', and with `drop` the
    key is taken out of the tree (our own meaning of it must not apply)."""
    rule.also_ours = True  # type: ignore[attr-defined]
    rule.drop = drop  # type: ignore[attr-defined]
    return rule


def no_effect(reason: str) -> Rule:
    def rule(ctx: Context, key: str, value: Any, block: Mapping[str, Any]) -> None:
        ctx.report.add(key, "no effect", reason)

    return rule


def off_only(what: str, fix: str = "") -> Rule:
    """Accepted while it is off (0, false, null, empty, a schedule that stays 0); otherwise refused."""

    def rule(ctx: Context, key: str, value: Any, block: Mapping[str, Any]) -> None:
        off = not value if not (isinstance(value, (int, float)) or is_schedule(value)) else c_max(value) == 0
        if off:
            ctx.report.add(key, "no effect", f"off ({what} is not implemented here)")
        else:
            ctx.refuse(key, f"{what} is not implemented here, so {value!r} would change the result; "
                            f"{fix or 'remove the key or set it to 0 / false'}")  # fmt: skip

    return rule


def only(allowed: Any, what: str) -> Rule:
    """Accepted when equal to `allowed` (what we do anyway); otherwise refused."""

    def rule(ctx: Context, key: str, value: Any, block: Mapping[str, Any]) -> None:
        if value == allowed:
            ctx.report.add(key, "no effect", f"{value!r} is what happens here ({what})")
        else:
            ctx.refuse(key, f"only {allowed!r} is supported ({what}); remove the key or set it to {allowed!r}")

    return rule


def to(target: str, convert: Callable[[Any], Any] | None = None, absolute: bool = False) -> Rule:
    """Rename: the value goes to `target` (relative to the key's block unless `absolute`), optionally converted.
    `convert` may raise ValueError to refuse a value."""

    def rule(ctx: Context, key: str, value: Any, block: Mapping[str, Any]) -> None:
        path = target if absolute else join(parent(key), target)
        try:
            new = convert(value) if convert else value
        except ValueError as exc:
            ctx.refuse(key, str(exc))
            return
        ctx.put(path, new, key)

    return rule


def same_as(other: str, what: str) -> Rule:
    """Accepted when it equals the value at `other` (absolute path), which is what we use; otherwise refused."""

    def rule(ctx: Context, key: str, value: Any, block: Mapping[str, Any]) -> None:
        expected = get_path(ctx.written, other, None)
        if value == expected or (expected is None and value in ("", None)):
            ctx.report.add(key, "no effect", f"equals {other} ({what})")
        else:
            ctx.refuse(key, f"is {value!r} but {other} is {expected!r}, and {what}: set it to {expected!r} "
                            f"(or change {other})")  # fmt: skip

    return rule


def mapping(table: Mapping[Any, Any], what: str) -> Callable[[Any], Any]:
    """A `convert` for `to()`: look the value up; an unknown value is refused naming the accepted ones."""

    def convert(value: Any) -> Any:
        for k, v in table.items():
            if value == k and type(value) is type(k):
                return v
        raise ValueError(f"{value!r} is not supported ({what}); use one of {', '.join(map(repr, table))}")

    return convert
