"""The one table from upstream `*_type` names (threestudio, the original Hash3D, GaussianDreamer) to ours.

One line per upstream name. `defaults` are the upstream module's own defaults where they differ from ours; they fill
keys a foreign file leaves out (never keys it sets). `sets` are values the upstream name itself implies (a `-cache`
guidance has the cache on). `ours=None` with `missing` set: the upstream component is not implemented here, and a
file that names it is refused with that fix. `ours=None` without `missing`: the block is read by another part (a
prompt processor's prompt is read by the system). `built_in`: systems whose own code is this component (e.g. the
Gaussian rasterisers); the name is read there, and refused with `missing` elsewhere.

To add a system: register it (`hash3d.config.register`), then add its upstream names here, e.g.
    T("system", "magic3d-system", "magic3d-system"),
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class TypeName:
    kind: str
    """Registry kind: system, data, geometry, material, background, renderer, guidance, prompt_processor, exporter."""
    upstream: str
    ours: str | None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Dotted keys inside the block -> the upstream default (filled only where the file is silent)."""
    sets: Mapping[str, Any] = field(default_factory=dict)
    """Dotted keys inside the block -> the value the upstream name implies (the file's own value wins)."""
    missing: str = ""
    """When ours is None: what to do instead (the refusal's fix)."""
    note: str = ""
    built_in: tuple[str, ...] = ()
    """Systems of ours that have this component built in (they have no `*_type` key for it): in their files the
    name is accepted with no effect; any other name for that kind is refused."""


T = TypeName

# threestudio's guidance modules reduce the SDS loss over the batch as mean; its zero123 modules default to CFG 5 and
# (stable-zero123, zero123) fp32 weights.
_TS_GUIDANCE = {"loss_reduction": "batch_mean"}
_TS_ZERO123 = {**_TS_GUIDANCE, "guidance_scale": 5.0, "dtype": "fp32"}
# The original Hash3D guidance modules' table: cells of 20 deg, 20 deg, 0.1 and 10 timesteps, 3 entries a bucket,
# 200 buckets, no adaptive grid, hash probability 0.5.
_ORIGINAL_CACHE = {
    "cache.cell_size": [20.0, 20.0, 0.1, 10.0],
    "cache.bucket_size": 3,
    "cache.n_buckets": 200,
    "cache.adaptive": False,
    "cache.policy.probability": 0.5,
}
_CACHE_ON = {"cache.enabled": True}

TYPE_NAMES: tuple[TypeName, ...] = (
    # systems
    T("system", "zero123-system", "zero123-system"),
    T("system", "dreamfusion-system", "dreamfusion-system"),
    T("system", "gaussiandreamer-system", "gaussiandreamer-system"),
    # data
    T("data", "single-image-datamodule", "single-image-datamodule"),
    T("data", "random-camera-datamodule", "random-camera-datamodule"),
    # geometry
    T("geometry", "implicit-volume", "implicit-volume",
      defaults={"radius": 1.0, "normal_type": "finite_difference", "mlp_network_config.n_hidden_layers": 1}),
    T("geometry", "tetrahedra-sdf-grid", "tetrahedra-sdf-grid",
      defaults={"radius": 1.0, "mlp_network_config.n_hidden_layers": 1}),
    # material / background / renderer / exporter
    T("material", "diffuse-with-point-light-material", "diffuse-with-point-light"),
    T("background", "solid-color-background", "solid-color-background"),
    T("background", "neural-environment-map-background", "neural-environment-map-background"),
    T("renderer", "nerf-volume-renderer", "nerf-volume-renderer"),
    T("exporter", "mesh-exporter", "mesh-exporter"),
    # threestudio-3dgs' rasterisers and material: built into our Gaussian-splatting systems
    T("renderer", "diff-gaussian-rasterizer-advanced", None, built_in=("gaussian-splatting-zero123-system",),
      missing="the plain Gaussian rasteriser is built into system_type gaussian-splatting-zero123-system"),
    T("renderer", "diff-gaussian-rasterizer-shading", None, built_in=("gaussian-splatting-system",),
      missing="the shading Gaussian rasteriser is built into system_type gaussian-splatting-system"),
    T("material", "gaussian-diffuse-with-point-light-material", None, built_in=("gaussian-splatting-system",),
      missing="the Gaussians' point-light material is built into system_type gaussian-splatting-system (its "
              "system.material block)"),
    # guidance
    T("guidance", "stable-zero123-guidance", "stable-zero123-guidance", defaults=_TS_ZERO123),
    T("guidance", "zero123-guidance", "zero123-guidance", defaults=_TS_ZERO123),
    T("guidance", "zero123-unified-guidance", "zero123-guidance", defaults={**_TS_GUIDANCE, "guidance_scale": 5.0}),
    T("guidance", "zero123-unified-guidance-cache", "zero123-guidance",
      defaults={**_TS_GUIDANCE, "guidance_scale": 5.0, "cache.mode": "noise", **_ORIGINAL_CACHE}, sets=_CACHE_ON),
    T("guidance", "stable-diffusion-guidance", "stable-diffusion-guidance", defaults=_TS_GUIDANCE),
    T("guidance", "stable-diffusion-unified-guidance", "stable-diffusion-guidance", defaults=_TS_GUIDANCE),
    T("guidance", "stable-diffusion-guidance-cache", "stable-diffusion-guidance",
      defaults={**_TS_GUIDANCE, "cache.mode": "features", **_ORIGINAL_CACHE}, sets=_CACHE_ON),
    # prompt processors: the system reads the prompt, the guidance model encodes it
    T("prompt_processor", "stable-diffusion-prompt-processor", None, note="prompt read by the system"),
    T("prompt_processor", "dummy-prompt-processor", None, note="no prompt"),
)

_BY_NAME: dict[tuple[str, str], TypeName] = {(t.kind, t.upstream): t for t in TYPE_NAMES}


def upstream_type(kind: str, name: str) -> TypeName | None:
    """The table's line for an upstream name, or None when the name is not an upstream one."""
    return _BY_NAME.get((kind, name))


def built_in_names(kind: str, system_type: str) -> list[str]:
    """Upstream names of the `kind` component that `system_type` has built in."""
    return sorted(t.upstream for t in TYPE_NAMES if t.kind == kind and system_type in t.built_in)


def upstream_names(kind: str) -> list[str]:
    return sorted(t.upstream for t in TYPE_NAMES if t.kind == kind)


def unknown_type_error(kind: str, name: str, ours: list[str]) -> ConfigError:
    upstream = [n for n in upstream_names(kind) if n not in ours]
    also = f"; upstream names read here: {', '.join(upstream)}" if upstream else ""
    return ConfigError(
        f"unknown {kind} type '{name}'{did_you_mean(name, sorted({*ours, *upstream}))} "
        f"(registered: {', '.join(sorted(ours)) or 'none'}{also})"
    )
