"""Typed configuration: YAML (with `extends`) + `key=value` overrides -> validated dataclass trees.

- `load_config(path, overrides)` -> (ExperimentConfig, merged OmegaConf tree)
- `register(kind, name, config=Cls)` / `register_lazy(...)`: the name registry behind `*_type` strings
- `block(kind)`: declare a config field whose dataclass is selected by its sibling `<kind>_type`
- `build(kind, name, cfg, **runtime)` / `build_block(parent_cfg, "geometry", **runtime)`: construct components
- `flatten` / `config_diff`: configs as {dotted key: value}, and the keys where two differ
- `discover` / `twins` / `twin_differences` / `smoke_overrides`: a front-end's configs as a method table for tests

See `registry.py` for a complete example of registering a component.
"""

from .diff import config_diff, flatten
from .errors import ConfigError, RegistryError, UserInputError, closest, did_you_mean
from .methods import discover, smoke_overrides, twin_differences, twins
from .foreign import Report, read_dreamgaussian, read_experiment
from .loader import config_file, explain_config, load_config, load_config_report, load_yaml, merge, parse_overrides, resolve, save_yaml, to_yaml, validate
from .registry import REGISTRY, Entry, build, build_block, load_plugins, lookup, names, register, register_lazy
from .schema import CheckpointConfig, ExperimentConfig, TrainerConfig
from .typed import block, from_data, to_data

__all__ = [
    "config_diff",
    "flatten",
    "REGISTRY",
    "CheckpointConfig",
    "ConfigError",
    "Entry",
    "ExperimentConfig",
    "RegistryError",
    "TrainerConfig",
    "UserInputError",
    "block",
    "build",
    "build_block",
    "closest",
    "did_you_mean",
    "discover",
    "from_data",
    "config_file",
    "explain_config",
    "load_config",
    "load_config_report",
    "read_dreamgaussian",
    "read_experiment",
    "Report",
    "load_plugins",
    "load_yaml",
    "lookup",
    "merge",
    "names",
    "parse_overrides",
    "register",
    "register_lazy",
    "resolve",
    "save_yaml",
    "smoke_overrides",
    "to_data",
    "to_yaml",
    "twin_differences",
    "twins",
    "validate",
]
