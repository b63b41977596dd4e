"""Loading configs: YAML files that extend others, `key.sub=value` overrides, interpolation, then typed validation."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .foreign import Report, read_experiment
from .foreign.schedules import c_max
from .typed import from_data, to_data

T = TypeVar("T")

SELF = "_self_"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (ListConfig, DictConfig)) else value


def _exp_lr_decay_rate(factor: float, n: int | float) -> float:
    """The per-step factor that decays the learning rate by `factor` over `n` steps. In the threestudio configs n is
    trainer.max_steps minus the warm-up steps: a run no longer than its warm-up never reaches the decay, so its factor
    is 1 (n = 0 divided by zero before)."""
    return factor ** (1.0 / n) if n > 0 else 1.0


def _register_resolvers() -> None:
    """Resolvers the threestudio configs use in interpolations (`${basename:${data.image_path}}`, …)."""
    resolvers = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        "basename": lambda p: os.path.basename(str(p)),
        "rmspace": lambda s, sub="_": str(s).replace(" ", sub),
        "tuple2": lambda s: [float(s), float(s)],
        "gt0": lambda s: s > 0,
        "cmaxgt0": lambda s: c_max(_plain(s)) > 0,
        "not": lambda s: not s,
        "not0": lambda s: s != 0,
        "cmaxgt0orcmaxgt0": lambda a, b: c_max(_plain(a)) > 0 or c_max(_plain(b)) > 0,
        "calc_exp_lr_decay_rate": _exp_lr_decay_rate,
        "sqrt": lambda x: math.sqrt(x),
    }
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # 2.4 renamed it
    for name, fn in resolvers.items():
        register(name, fn, replace=True)


_register_resolvers()


def config_file(path: str | os.PathLike) -> Path:
    """The file a `--config` path names: itself, or for the original Hash3D project's names (`X-hash3d.yaml`, with a
    hyphen) that are not there, our `X_hash3d.yaml` beside it (and the other way round)."""
    path = Path(path)
    if path.is_file():
        return path
    for a, b in (("-hash3d.yaml", "_hash3d.yaml"), ("_hash3d.yaml", "-hash3d.yaml")):
        if path.name.endswith(a):
            twin = path.with_name(path.name[: -len(a)] + b)
            if twin.is_file():
                return twin
    return path


def load_yaml(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> DictConfig:
    """Load one YAML file and, recursively, the files it extends.

    A file may name its bases as `extends: base.yaml` (or a list) or as a defaults list
    `defaults: [base.yaml, _self_]`; paths are relative to the file. Later entries override earlier ones, and the
    file itself is merged last unless `_self_` appears earlier in its defaults list.
    """
    path = Path(path) if _chain else config_file(path)
    if not path.is_file():
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p.name) for p in (*_chain, resolved))
        raise ConfigError(f"config files extend each other in a cycle: {cycle}")
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if cfg is None or (isinstance(cfg, DictConfig) and len(cfg) == 0 and not path.read_text().strip()):
        cfg = OmegaConf.create({})
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not a list")
    bases_before: list[str] = []
    bases_after: list[str] = []
    for key in ("extends", "defaults"):
        if key not in cfg:
            continue
        entries = OmegaConf.to_container(cfg[key]) if isinstance(cfg[key], (ListConfig, DictConfig)) else cfg[key]
        cfg.pop(key)
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"'{key}' in {path} must be a file name or a list of file names; got {entries!r}")
        target = bases_before
        for entry in entries:
            if entry == SELF:
                target = bases_after
                continue
            target.append(entry)
    chain = (*_chain, resolved)
    parts = [load_yaml(path.parent / b, chain) for b in bases_before]
    parts.append(cfg)
    parts.extend(load_yaml(path.parent / b, chain) for b in bases_after)
    try:
        return OmegaConf.merge(*parts) if len(parts) > 1 else cfg
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot merge {path} with the files it extends: {exc}") from exc


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """`key.sub=value` tokens -> a config (values parsed as YAML: numbers, lists `[1,2]`, booleans, null)."""
    for token in overrides:
        if "=" not in token or token.startswith("="):
            raise ConfigError(f"override '{token}' is not of the form key.sub=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc}") from exc


def merge(base: DictConfig, *others: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, *others)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot apply overrides: {exc}") from exc


def _missing_keys(cfg: DictConfig) -> list[str]:
    """Keys whose value is `???` (a broken interpolation is left for `resolve` to report)."""
    try:
        return sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException:
        return []


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation -> plain python data."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" at '{key}'" if key else ""
        msg = str(exc).split("\n")[0]
        raise ConfigError(f"cannot resolve the config{where}: {msg}") from exc
    assert isinstance(data, dict)
    return data


def validate(schema: type[T], data: Any) -> T:
    """Plain data -> a typed config tree (ConfigError naming the key on any problem)."""
    return from_data(schema, data)


Translate = Callable[[dict[str, Any], type], "tuple[dict[str, Any], Report]"]


def load_config_report(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    schema: type[T] | None = None,
    translate: Translate | None = None,
) -> tuple[T, DictConfig, Report]:
    """`load_config`, also returning how each key was read (`foreign.Report`).

    `translate` reads a foreign layout into ours (default for the experiment schema: threestudio's layout, see
    `hash3d.config.foreign`); a key it refuses raises ConfigError before validation.
    """
    if schema is None:
        from .schema import ExperimentConfig

        schema = ExperimentConfig  # type: ignore[assignment]
        translate = translate or read_experiment
    base = load_yaml(config_file(path)) if path is not None else OmegaConf.create({})
    merged = merge(base, parse_overrides(overrides)) if overrides else base
    missing = _missing_keys(merged)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} must be given (??? in {path}): add e.g. {missing[0]}=VALUE to the command line"
        )
    data = resolve(merged)
    report = Report()
    if translate is not None:
        data, report = translate(data, schema)  # type: ignore[arg-type]
        report.raise_refusals()
    typed = validate(schema, data)  # type: ignore[arg-type]
    return typed, merged, report


def load_config(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    schema: type[T] | None = None,
    translate: Translate | None = None,
) -> tuple[T, DictConfig]:
    """Load a YAML (following `extends`), apply overrides, resolve, read a foreign layout, and validate.

    Returns the typed config and the merged, unresolved OmegaConf tree (what `configs/raw.yaml`-style dumps need).
    `schema` defaults to the experiment schema (`ExperimentConfig`).
    """
    typed, merged, _ = load_config_report(path, overrides, schema, translate)
    return typed, merged


def explain_config(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    schema: type | None = None,
    translate: Translate | None = None,
) -> tuple[str, bool]:
    """How each key of a config file (after overrides) is read here -> (text, whether the config would run)."""
    if schema is None:
        from .schema import ExperimentConfig

        schema = ExperimentConfig
        translate = translate or read_experiment
    merged = load_yaml(config_file(path))
    if overrides:
        merged = merge(merged, parse_overrides(overrides))
    missing = _missing_keys(merged)
    for key in missing:  # `???` values: explain the rest, then say which keys the command line must give
        OmegaConf.update(merged, key, "<required>")
    data = resolve(merged)
    report = Report()
    if translate is not None:
        data, report = translate(data, schema)
    lines = [report.explain()]
    try:
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be given (??? in the file): add e.g. {missing[0]}=VALUE")
        report.raise_refusals()
        validate(schema, data)
    except ConfigError as exc:
        lines.append(f"error: {exc}")
        return "\n".join(lines), False
    lines.append("ok: the config loads")
    return "\n".join(lines), True


def to_yaml(cfg: Any) -> str:
    """A typed config tree (or plain data) -> YAML text that `load_config` reads back to an equal tree."""
    return OmegaConf.to_yaml(OmegaConf.create(to_data(cfg)))


def save_yaml(cfg: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(to_yaml(cfg))
