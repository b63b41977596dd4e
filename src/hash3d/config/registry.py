"""A name registry for pluggable components: one entry = (kind, name) -> config dataclass + builder.

The YAML names components by string (`system_type: zero123-system`, `system.geometry_type: implicit-volume`);
the registry turns that string into the config class the block is validated against *and* the callable that
builds the component, so validation and construction can never disagree.

Registering a component (the whole recipe)::

    from dataclasses import dataclass
    from hash3d.config import register

    @dataclass
    class ImplicitVolumeConfig:
        radius: float = 1.0
        \"\"\"Half side of the scene's bounding box.\"\"\"
        n_levels: int = 16

    @register("geometry", "implicit-volume", config=ImplicitVolumeConfig)
    class ImplicitVolume(torch.nn.Module):
        def __init__(self, cfg: ImplicitVolumeConfig, device=None): ...

A parent config declares the block with `block()` next to its selector field::

    @dataclass
    class MySystemConfig(SystemConfig):
        geometry_type: str = "implicit-volume"
        geometry: Any = block("geometry", selector="geometry_type")

and builds it with `build_block(self.cfg, "geometry", device=...)`. The module that registers must be imported
before a config is validated: add it to `PLUGIN_MODULES` (or to the `HASH3D_PLUGINS` environment variable,
a comma list, for out-of-tree code). Heavy modules can be registered lazily by import path with
`register_lazy(kind, name, config="pkg.mod:Config", builder="pkg.mod:Builder")`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from typing import Any

from .errors import RegistryError, did_you_mean

# Modules that register components; each is imported before a config is validated.
PLUGIN_MODULES: list[str] = [
    "hash3d.config.builtin",
    "hash3d.data",
    "hash3d.scene",
    "hash3d.render",
    "hash3d.export",
    "hash3d.systems",
]
PLUGIN_ENV = "HASH3D_PLUGINS"


def _import_path(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not attr:
        raise RegistryError(f"import path {path!r} must look like 'package.module:Name'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    """One registered component. `config` and `builder` may be import paths until first use."""

    kind: str
    name: str
    _config: type | str
    _builder: Callable[..., Any] | str
    description: str = ""

    @property
    def config(self) -> type:
        if isinstance(self._config, str):
            self._config = _import_path(self._config)
        return self._config  # type: ignore[return-value]

    @property
    def builder(self) -> Callable[..., Any]:
        if isinstance(self._builder, str):
            self._builder = _import_path(self._builder)
        return self._builder

    @property
    def is_lazy(self) -> bool:
        return isinstance(self._config, str) or isinstance(self._builder, str)

    @property
    def labels(self) -> tuple[str, str]:
        """(config, builder) as dotted names, without importing a lazy entry."""
        return _label(self._config), _label(self._builder)


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        kind = self.entries.setdefault(entry.kind, {})
        old = kind.get(entry.name)
        if old is not None and not _same_target(old, entry):
            raise RegistryError(
                f"{entry.kind} name '{entry.name}' is already registered (config {old.labels[0]}, builder "
                f"{old.labels[1]}); pick another name"
            )
        if old is None or old.is_lazy:
            kind[entry.name] = entry

    def get(self, kind: str, name: str) -> Entry:
        names = self.entries.get(kind, {})
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise RegistryError(f"unknown {kind} type '{name}'{did_you_mean(name, names)} (registered: {known})")
        return names[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def remove(self, kind: str, name: str) -> None:
        self.entries.get(kind, {}).pop(name, None)


def _label(obj: Any) -> str:
    return obj if isinstance(obj, str) else f"{obj.__module__}:{obj.__qualname__}"


def _same_target(a: Entry, b: Entry) -> bool:
    """Re-registering the same objects (or an eager registration of what a lazy entry points at) is not a clash."""
    return a.labels == b.labels


REGISTRY = Registry()


def register(kind: str, name: str, *, config: type | str, description: str = "") -> Callable[[Any], Any]:
    """Decorator: register a builder (a class or a function `builder(cfg, **runtime)`) under (kind, name).

    `config` is the dataclass the YAML block of that name is validated into. A second registration of the same
    (kind, name) with different objects raises RegistryError.
    """
    if not isinstance(config, str) and not is_dataclass(config):
        raise RegistryError(f"config for {kind} '{name}' must be a dataclass, got {config!r}")

    def decorator(builder: Any) -> Any:
        REGISTRY.add(Entry(kind, name, config, builder, description or (builder.__doc__ or "").strip().split("\n")[0]))
        return builder

    return decorator


def register_lazy(kind: str, name: str, *, config: str, builder: str, description: str = "") -> None:
    """Register by import paths ('pkg.mod:Name'); nothing is imported until the entry is used."""
    REGISTRY.add(Entry(kind, name, config, builder, description))


def lookup(kind: str, name: str) -> Entry:
    """The entry registered under (kind, name); RegistryError with the closest name otherwise.

    A name not registered yet triggers `load_plugins()` once, so a config that only uses already-imported components
    never imports (or depends on) the other plugin packages.
    """
    try:
        return REGISTRY.get(kind, name)
    except RegistryError as first:
        failures = load_plugins()
        try:
            return REGISTRY.get(kind, name)
        except RegistryError:
            if failures:
                detail = "; ".join(f"{m}: {e}" for m, e in failures.items())
                raise RegistryError(f"{first} (plugin modules that failed to import: {detail})") from None
            raise


def names(kind: str) -> list[str]:
    load_plugins()
    return REGISTRY.names(kind)


def build(kind: str, name: str, cfg: Any, **runtime: Any) -> Any:
    """Build the component registered as (kind, name) from its validated config."""
    entry = lookup(kind, name)
    if not isinstance(cfg, entry.config):
        raise RegistryError(
            f"{kind} '{name}' expects a {entry.config.__name__}, got {type(cfg).__name__}; validate the block first"
        )
    return entry.builder(cfg, **runtime)


def build_block(parent: Any, attr: str, **runtime: Any) -> Any:
    """Build the child `parent.<attr>` selected by its `block()` selector field (e.g. `geometry_type`).

    Returns None when the selector is empty (an optional component that is switched off).
    """
    from .typed import block_info

    info = block_info(type(parent), attr)
    name = getattr(parent, info.selector)
    if not name:
        return None
    return build(info.kind, name, getattr(parent, attr), **runtime)


_loaded: set[str] = set()


def load_plugins(extra: list[str] | None = None) -> dict[str, str]:
    """Import every module that registers components: PLUGIN_MODULES, $HASH3D_PLUGINS and `extra`.

    Returns {module: error} for those that failed to import; each module is tried once per process.
    """
    env = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    failures: dict[str, str] = {}
    for module in [*PLUGIN_MODULES, *env, *(extra or [])]:
        if module in _loaded:
            continue
        _loaded.add(module)
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported with the registry miss that needed the plugin
            failures[module] = f"{type(exc).__name__}: {exc}"
    _failures.update(failures)
    return dict(_failures)


_failures: dict[str, str] = {}
