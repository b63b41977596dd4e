"""Config loading: extends / defaults lists, overrides, interpolation, typed validation errors, the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from hash3d.config import (
    REGISTRY,
    ConfigError,
    ExperimentConfig,
    RegistryError,
    block,
    build,
    build_block,
    from_data,
    load_config,
    lookup,
    register,
    register_lazy,
    to_yaml,
)


# ---------------------------------------------------------------- a tiny component tree registered for these tests
@dataclass
class _ToyGeometryConfig:
    radius: float = 1.0
    n_levels: int = 16


@register("geometry", "toy-geometry-test", config=_ToyGeometryConfig)
class _ToyGeometry:
    def __init__(self, cfg: _ToyGeometryConfig, scale: float = 1.0):
        self.cfg, self.scale = cfg, scale


@dataclass
class _ToyLoss:
    lambda_rgb: float | int | list[float] = 1.0
    lambda_mask: float = 0.0


@dataclass
class _ToySystemConfig:
    geometry_type: str = "toy-geometry-test"
    geometry: Any = block("geometry")
    renderer_type: str = ""
    renderer: Any = block("renderer")
    mode: Literal["fast", "slow"] = "fast"
    sizes: tuple[int, int] = (1, 2)
    loss: _ToyLoss = field(default_factory=_ToyLoss)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sizes[0] > self.sizes[1]:
            raise ValueError("sizes must be increasing")


register("system", "toy-system-test", config=_ToySystemConfig)(lambda cfg, **kw: ("built", cfg))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """
name: base
seed: 3
data_type: random-camera-datamodule
data:
  height: 32
  width: 32
system_type: toy-system-test
system:
  geometry:
    radius: 2.0
trainer:
  max_steps: 10
"""


# ---------------------------------------------------------------- loading
def test_extends_chain_relative_paths_and_overrides(tmp_path):
    write(tmp_path / "base" / "base.yaml", BASE)
    write(tmp_path / "mid.yaml", "extends: base/base.yaml\nname: mid\nsystem:\n  loss:\n    lambda_rgb: [0, 10, 1, 100]\n")
    child = write(tmp_path / "configs" / "child.yaml", "extends: ../mid.yaml\ntrainer:\n  val_check_interval: 5\n")
    cfg, _ = load_config(child, ["system.geometry.n_levels=8", "tag=a fox playing a violin", "data.batch_size=[4,2]",
                                 "data.resolution_milestones=[100]"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "mid" and cfg.seed == 3
    assert cfg.trainer.max_steps == 10 and cfg.trainer.val_check_interval == 5
    assert cfg.system.geometry == _ToyGeometryConfig(radius=2.0, n_levels=8)
    assert cfg.system.loss.lambda_rgb == [0.0, 10.0, 1.0, 100.0]
    assert cfg.tag == "a fox playing a violin"
    assert cfg.data.batch_size == [4, 2] and cfg.data.height == 32
    assert type(cfg.data).__name__ == "RandomCameraConfig"


def test_defaults_list_order_and_self(tmp_path):
    write(tmp_path / "a.yaml", "name: a\nseed: 1\n")
    write(tmp_path / "b.yaml", "name: b\n")
    # _self_ first: b.yaml (listed after it) overrides this file's name
    cfg, _ = load_config(write(tmp_path / "c.yaml", "defaults: [a.yaml, _self_, b.yaml]\nname: c\nseed: 7\n"))
    assert (cfg.name, cfg.seed) == ("b", 7)
    cfg, _ = load_config(write(tmp_path / "d.yaml", "defaults: [a.yaml]\nname: d\n"))
    assert (cfg.name, cfg.seed) == ("d", 1)


def test_extends_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "x.yaml", "extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(extended by .*x.yaml\)"):
        load_config(bad)
    write(tmp_path / "p.yaml", "extends: q.yaml\n")
    write(tmp_path / "q.yaml", "extends: p.yaml\n")
    with pytest.raises(ConfigError, match="cycle: p.yaml -> q.yaml -> p.yaml"):
        load_config(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config(write(tmp_path / "broken.yaml", "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(write(tmp_path / "ok.yaml", "name: ok\n"), ["trainer.max_steps"])


def test_interpolations_and_resolvers(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    path = write(
        tmp_path / "i.yaml",
        'extends: base.yaml\ntag: "${data.height}_${rmspace:${basename:${system.names.0}},_}"\n'
        "system:\n  names: ['/x/my dog_rgba.png']\n  geometry:\n    n_levels: ${idiv:32,2}\n",
    )
    cfg, _ = load_config(path)
    assert cfg.tag == "32_my_dog_rgba.png"
    assert cfg.system.geometry.n_levels == 16
    with pytest.raises(ConfigError, match="cannot resolve the config"):
        load_config(path, ["tag=${nothing.here}"])


# ---------------------------------------------------------------- validation errors
def test_unknown_key_names_full_path_and_closest(tmp_path):
    path = write(tmp_path / "base.yaml", BASE)
    with pytest.raises(ConfigError) as err:
        load_config(path, ["system.geometry.radiuss=3"])
    assert str(err.value) == "unknown config key 'system.geometry.radiuss' — did you mean 'radius'?"
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.max_step' — did you mean 'max_steps'\?"):
        load_config(path, ["trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sytem' — did you mean 'system'\?"):
        load_config(path, ["sytem.mode=fast"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'zzz'$"):
        load_config(path, ["zzz=1"])


def test_real_guidance_block_validates_with_suggestion(tmp_path):
    """The guidance configs (unions, Literals, nested cache block) validate through the lazy registry entries."""

    @dataclass
    class GuidedConfig:
        guidance_type: str = "stable-zero123-guidance"
        guidance: Any = block("guidance")

    register("system", "guided-system-test", config=GuidedConfig)(lambda cfg, **kw: cfg)
    path = write(tmp_path / "g.yaml", "system_type: guided-system-test\nsystem:\n  guidance:\n    guidance_scale: 5\n"
                 "    min_step_percent: [50, 0.7, 0.3, 200]\n    cache:\n      enabled: true\n      policy:\n"
                 "        probability: 0.3\n")
    cfg, _ = load_config(path)
    g = cfg.system.guidance
    assert type(g).__name__ == "Zero123GuidanceConfig"
    assert g.guidance_scale == 5.0 and g.min_step_percent == [50.0, 0.7, 0.3, 200.0] and g.max_step_percent == 0.98
    assert g.cache.enabled and g.cache.policy.probability == 0.3
    with pytest.raises(ConfigError) as err:
        load_config(path, ["system.guidance.guidance_scal=3"])
    assert str(err.value) == "unknown config key 'system.guidance.guidance_scal' — did you mean 'guidance_scale'?"
    with pytest.raises(ConfigError, match=r"'system.guidance.cache.mode' must be one of 'features', 'noise'; got 'feature'"
                       r".*did you mean 'features'\?"):
        load_config(path, ["system.guidance.cache.mode=feature"])
    with pytest.raises(ConfigError, match=r"unknown config key 'system.guidance.cache.policy.probabilty'"):
        load_config(path, ["system.guidance.cache.policy.probabilty=1"])
    # a key of a nested block written one level too high (misspelt or not): its full key is suggested
    for key in ("system.guidance.cache.probabilty", "system.guidance.cache.probability"):
        with pytest.raises(ConfigError) as err:
            load_config(path, [f"{key}=0.5"])
        assert str(err.value) == f"unknown config key '{key}' — did you mean 'system.guidance.cache.policy.probability'?"
    with pytest.raises(ConfigError, match="invalid config at 'system.guidance.cache.policy'.*probability must be in"):
        load_config(path, ["system.guidance.cache.policy.probability=3"])


def test_type_errors_are_clear(tmp_path):
    path = write(tmp_path / "base.yaml", BASE)
    cases = {
        "trainer.max_steps=abc": r"'trainer.max_steps' must be an integer; got 'abc' \(str\)",
        "trainer.enable_progress_bar=maybe": r"'trainer.enable_progress_bar' must be a boolean",
        "system.mode=medium": r"'system.mode' must be one of 'fast', 'slow'; got 'medium'",
        "system.sizes=[1,2,3]": r"'system.sizes' must be a list of 2 values",
        "system.sizes=[3,1]": r"invalid config at 'system': sizes must be increasing",
        "system.geometry=5": r"'system.geometry' must be a mapping of _ToyGeometryConfig fields; got 5",
        "system.loss.lambda_rgb=high": r"'system.loss.lambda_rgb' must be a number or an integer or a list",
        "system.names=[1, [2]]": r"'system.names\[1\]' must be a string",
        "trainer.precision=8": r"trainer.precision must be 32, '16-mixed' or 'bf16-mixed'",
        "data.fovy_range=[70, 40]": r"fovy_range must be \[low, high\]",
        "data.height=[32, 64]": r"height has 2 entries but resolution_milestones \[\] make 1 intervals",
        "system.renderer.x=1": r"'system.renderer' is set but 'system.renderer_type' is empty",
        "system.geometry_type=toy-geometri-test": r"'system.geometry_type': unknown geometry type 'toy-geometri-test' — "
        r"did you mean 'toy-geometry-test'\?",
    }
    for override, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_config(path, [override])
    # accepted conversions: YAML's '1e-8' string for a float, an integral float for an int, a number for a string
    cfg, _ = load_config(path, ["system.loss.lambda_mask=1e-8", "trainer.max_steps=20.0", "tag=123", "trainer.precision=16"])
    assert cfg.system.loss.lambda_mask == 1e-8 and cfg.trainer.max_steps == 20 and cfg.tag == "123"
    assert cfg.trainer.precision == "16-mixed"


def test_missing_required_key():
    @dataclass
    class NeedsPath:
        path: str

    with pytest.raises(ConfigError, match=r"missing required config key 'data.path' \(a string\)"):
        from_data(NeedsPath, {}, "data")


def test_parsed_yaml_round_trips(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    cfg, _ = load_config(tmp_path / "base.yaml", ["system.loss.lambda_rgb=[100, 500, 1000, 400]", "data.batch_size=[2,1]",
                                                  "data.resolution_milestones=[5]"])
    text = to_yaml(cfg)
    again, _ = load_config(write(tmp_path / "parsed.yaml", text))
    assert again == cfg
    assert to_yaml(again) == text


# ---------------------------------------------------------------- registry
def test_registry_rejects_duplicates_and_builds():
    with pytest.raises(RegistryError, match="geometry name 'toy-geometry-test' is already registered"):
        register("geometry", "toy-geometry-test", config=_ToyGeometryConfig)(lambda cfg: None)
    # registering the very same objects again (a module imported twice) is not a clash
    register("geometry", "toy-geometry-test", config=_ToyGeometryConfig)(_ToyGeometry)
    with pytest.raises(RegistryError, match="must be a dataclass"):
        register("geometry", "not-a-dataclass-test", config=dict)
    with pytest.raises(RegistryError, match=r"unknown geometry type 'toy-geometry-tst' — did you mean 'toy-geometry-test'\?"):
        lookup("geometry", "toy-geometry-tst")
    parent = _ToySystemConfig(geometry=_ToyGeometryConfig(radius=3.0))
    geo = build_block(parent, "geometry", scale=2.0)
    assert isinstance(geo, _ToyGeometry) and geo.cfg.radius == 3.0 and geo.scale == 2.0
    assert build_block(parent, "renderer") is None
    with pytest.raises(RegistryError, match="expects a _ToyGeometryConfig"):
        build("geometry", "toy-geometry-test", _ToyLoss())


def test_lazy_registration_imports_on_use():
    register_lazy("renderer", "lazy-renderer-test", config="hash3d.config.schema:TrainerConfig",
                  builder="hash3d.config.schema:CheckpointConfig")
    entry = REGISTRY.get("renderer", "lazy-renderer-test")
    assert entry.is_lazy
    assert entry.config.__name__ == "TrainerConfig" and entry.builder.__name__ == "CheckpointConfig"
    assert not entry.is_lazy
    with pytest.raises(RegistryError, match="already registered"):
        register_lazy("renderer", "lazy-renderer-test", config="hash3d.config.schema:CheckpointConfig",
                      builder="hash3d.config.schema:CheckpointConfig")
    REGISTRY.remove("renderer", "lazy-renderer-test")


def test_method_table_twins_and_smoke(tmp_path):
    from hash3d.config import discover, smoke_overrides, twin_differences, twins

    folder = tmp_path / "configs"
    write(folder / "toy.yaml", BASE.replace("  width: 32\n", "  width: 32\n  batch_size: [4, 2]\n  resolution_milestones: [10]\n"))
    write(folder / "toy_hash3d.yaml", "extends: toy.yaml\nname: toy-hash3d\n")
    write(folder / "other_hash3d.yaml", BASE)
    with pytest.raises(ValueError, match="no no-cache twin other.yaml"):
        twins(folder)
    (folder / "other_hash3d.yaml").unlink()
    assert list(discover(folder)) == ["toy", "toy_hash3d"]
    ((plain, hashed),) = twins(folder)
    assert twin_differences(plain, hashed) == []
    write(folder / "toy_hash3d.yaml", "extends: toy.yaml\nname: toy-hash3d\ntrainer:\n  max_steps: 5\n")
    assert twin_differences(plain, hashed) == ["trainer.max_steps: 10 vs 5"]
    cfg, _ = load_config(plain)
    small, _ = load_config(plain, smoke_overrides(cfg))
    assert small.trainer.max_steps == 2 and small.data.batch_size == 1 and small.data.height == 32
    assert small.data.n_test_views == 2 and small.data.resolution_milestones == []
    nerf = Path(__file__).resolve().parents[1] / "threestudio-hash3d" / "configs" / "dreamfusion-sd.yaml"
    small, _ = load_config(nerf, smoke_overrides(load_config(nerf)[0]))
    assert small.system.geometry.pos_encoding_config.log2_hashmap_size == 12  # 2^19: ~200 MB checkpoints


def test_flatten_and_config_diff():
    from hash3d.config import config_diff, flatten

    a = {"x": 1, "sub": {"y": [1, 2], "z": {"w": "a"}}, "cache": {"on": False}}
    b = {"x": 1, "sub": {"y": [1, 3], "z": {}}, "cache": {"on": True}, "extra": None}
    assert flatten(a) == {"x": 1, "sub.y": [1, 2], "sub.z.w": "a", "cache.on": False}
    assert config_diff(a, b) == [
        "cache.on: False vs True", "extra: '<absent>' vs None", "sub.y: [1, 2] vs [1, 3]", "sub.z.w: 'a' vs '<absent>'"
    ]
    assert config_diff(a, b, lambda key: key.startswith(("cache", "extra"))) == [
        "sub.y: [1, 2] vs [1, 3]", "sub.z.w: 'a' vs '<absent>'"
    ]
