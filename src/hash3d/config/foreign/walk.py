"""Reading a threestudio-layout experiment tree against our schema, key by key.

Each key is either one of ours (read as is; an upstream spelling of its value is mapped, an epoch-counted schedule
becomes its constant), an upstream key with a rule (`threestudio.py`, `systems.py`), or unknown: refused with the
closest valid name (ours or upstream). `*_type` names go through the one table in `type_names.py`. When anything
was foreign, the upstream defaults of the components it named fill the keys the file left out.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any

from ..errors import ConfigError, RegistryError, did_you_mean
from ..registry import lookup, names
from ..typed import block_info, key_hint
from .report import Report
from .rules import Context, get_path, has_path, join, set_path
from .schedules import at_epoch_zero, counts_epochs, is_schedule
from .systems import SYSTEM_FINISH
from .threestudio import rules_at, value_alias
from .type_names import TypeName, unknown_type_error, upstream_type


def read_experiment(data: dict[str, Any], schema: type) -> tuple[dict[str, Any], Report]:
    """Translate a resolved experiment tree (ours or threestudio-layout) into ours. Refusals are recorded in the
    report, not raised (call `report.raise_refusals()`); the tree is returned unchanged when nothing was foreign."""
    report = Report()
    root = copy.deepcopy(data)
    ctx = Context(root=root, written=data, report=report)
    walker = _Walker(ctx, str(data.get("system_type", "")))
    walker.walk(root, schema, "")
    if not report.foreign:
        return data, report
    report.dialect = "threestudio"
    walker.read_epoch_schedules()
    for path, entry in walker.entries.items():
        for key, value in entry.sets.items():
            _fill(ctx, join(path, key), value, f"implied by {entry.kind} type '{entry.upstream}'", "mapped")
        for key, value in entry.defaults.items():
            ctx.put_default(join(path, key), value, f"{entry.kind} '{entry.upstream}' default upstream")
    finish = SYSTEM_FINISH.get(walker.system_type)
    if finish is not None:
        finish(ctx)
    if get_path(root, "system.geometry.normal_type", None) == "none" and "renderer" in root.get("system", {}):
        # threestudio renders normals only when asked; a geometry without normals must not be asked
        ctx.put_default("system.renderer.return_normal", False, "the geometry has no normals")
    for path, value, why in ctx.pending:
        _fill(ctx, path, value, why, "default")
    _check_models(ctx)
    return root, report


def _fill(ctx: Context, path: str, value: Any, why: str, verdict: str) -> None:
    if not has_path(ctx.root, path):
        set_path(ctx.root, path, value)
        ctx.report.add(path, verdict, f"= {value!r} ({why})")  # type: ignore[arg-type]


def _check_models(ctx: Context) -> None:
    path = "system.guidance.pretrained_model_name_or_path"
    model = get_path(ctx.root, path, "")
    if isinstance(model, str) and model.endswith((".ckpt", ".safetensors")) and "/" in model:
        hub = "ashawkey/stable-zero123-diffusers" if "stable" in model else "bennyguo/zero123-xl-diffusers"
        ctx.refuse(path, f"{model!r} is an original (LDM) checkpoint file; models load here in diffusers layout: pass "
                         f"{path}={hub} (or a local diffusers folder)")  # fmt: skip


def _dataclass_of(tp: Any) -> type | None:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(members) == 1:
        return _dataclass_of(members[0])
    return None


def _is_schedule_type(tp: Any) -> bool:
    args = typing.get_args(tp)
    return float in args and any(typing.get_origin(a) is not None for a in args)


class _Walker:
    def __init__(self, ctx: Context, system_type: str):
        self.ctx = ctx
        self.system_type = system_type
        self.entries: dict[str, TypeName] = {}
        """Block path -> the upstream table line its type name came from."""
        self.epoch_schedules: list[tuple[dict[str, Any], str, str]] = []
        """(block, key, full path) of schedules whose end step is a float: epochs in a foreign file, steps in ours."""

    def read_epoch_schedules(self) -> None:
        ctx = self.ctx
        for node, key, full in self.epoch_schedules:
            value = node[key]
            if len(value) > 4:
                ctx.refuse(full, f"{value!r}: a multi-piece schedule counted in epochs is not supported; write its "
                                 "step numbers as integers")  # fmt: skip
                continue
            node[key] = at_epoch_zero(value)
            ctx.report.add(full, "mapped", f"{value!r} counts epochs (float end step); threestudio's epoch stays 0, "
                                           f"so it is the constant {node[key]!r}")  # fmt: skip

    def walk(self, node: dict[str, Any], cls: type, path: str) -> None:
        ctx = self.ctx
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        block_classes: dict[str, type | None] = {}
        for f in fields.values():
            try:
                info = block_info(cls, f.name)
            except ConfigError:
                continue
            block_classes[f.name] = self.select(node, cls, path, f.name, info.kind, info.selector)
            if info.selector == "system_type" and node.get("system_type"):
                self.system_type = node["system_type"]
        rules = rules_at(path, self.system_type)
        written = dict(node)
        for key in list(node):
            full = join(path, key)
            value = node[key]
            if key in fields and getattr(rules.get(key), "also_ours", False):
                first = len(ctx.report.readings)
                if getattr(rules[key], "drop", False):
                    del node[key]
                rules[key](ctx, full, value, written)
                for reading in ctx.report.readings[first:]:
                    reading.ours = True
            elif key in fields:
                if key in block_classes:
                    sub = block_classes[key]
                    if sub is not None and isinstance(value, dict):
                        self.walk(value, sub, full)
                    continue
                if key.endswith("_type") and key[:-5] in block_classes:
                    continue  # recorded by select()
                self.read_own(node, key, value, hints[key], full)
            elif key in rules:
                del node[key]
                rules[key](ctx, full, value, written)
            elif isinstance(value, dict) and rules_at(full, self.system_type):
                del node[key]
                self.walk_rules_only(value, full)
            else:
                hint = did_you_mean(str(key), [*fields, *rules]) or key_hint(cls, str(key), path)
                ctx.refuse(full, f"unknown config key '{full}'{hint}")

    def walk_rules_only(self, node: dict[str, Any], path: str) -> None:
        """An upstream block we have no counterpart of (e.g. `system.freq`): every key needs a rule."""
        rules = rules_at(path, self.system_type)
        for key, value in node.items():
            full = join(path, key)
            if key in rules:
                rules[key](self.ctx, full, value, node)
            else:
                self.ctx.refuse(full, f"unknown config key '{full}'{did_you_mean(str(key), list(rules))}")

    def read_own(self, node: dict[str, Any], key: str, value: Any, tp: Any, full: str) -> None:
        ctx = self.ctx
        sub = _dataclass_of(tp)
        if sub is not None and isinstance(value, dict):
            self.walk(value, sub, full)
            return
        alias = value_alias(key, value)
        if alias is not value:
            node[key] = alias
            ctx.report.add(full, "mapped", f"{value!r} -> {alias!r}")
        elif _is_schedule_type(tp) and is_schedule(value) and counts_epochs(value):
            self.epoch_schedules.append((node, key, full))
            ctx.report.add(full, "as is")
        else:
            ctx.report.add(full, "as is")

    def select(self, node: dict[str, Any], cls: type, path: str, name: str, kind: str, selector: str) -> type | None:
        """Map the block's `*_type` name through the table; -> the config class of the block (None: not walked)."""
        ctx = self.ctx
        default = next((f.default for f in dataclasses.fields(cls) if f.name == selector), "")
        type_name = node.get(selector, default)
        sel_path = join(path, selector)
        if not type_name:
            return None
        entry = upstream_type(kind, str(type_name))
        if entry is not None:
            if entry.ours is None:
                ctx.refuse(sel_path, f"'{type_name}': {entry.missing or 'no ' + kind + ' of that kind here'}")
                return None
            self.entries[join(path, name)] = entry
            if entry.ours != type_name:
                node[selector] = entry.ours
                ctx.report.add(sel_path, "mapped", f"'{type_name}' -> '{entry.ours}'")
                type_name = entry.ours
            elif selector in node:
                ctx.report.add(sel_path, "as is")
        elif selector in node:
            ctx.report.add(sel_path, "as is")
        try:
            return lookup(kind, str(type_name)).config
        except RegistryError:
            error = unknown_type_error(kind, str(type_name), names(kind))
            ctx.refuse(sel_path, str(error))
            return None
