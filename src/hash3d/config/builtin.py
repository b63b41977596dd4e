"""Registry entries for components that live outside the plugin packages, registered lazily by import path so that
validating a config does not import diffusers until a guidance is actually built."""

from __future__ import annotations

from .registry import register_lazy

_G = "hash3d.diffusion.guidance"

register_lazy(
    "guidance",
    "stable-zero123-guidance",
    config=f"{_G}:Zero123GuidanceConfig",
    builder=f"{_G}:Zero123Guidance",
    description="SDS from Stable-Zero123 (diffusers layout) with the Hash3D cache",
)
register_lazy(
    "guidance",
    "zero123-guidance",
    config=f"{_G}:Zero123GuidanceConfig",
    builder=f"{_G}:Zero123Guidance",
    description="SDS from Zero123 / Zero123-XL (diffusers layout) with the Hash3D cache",
)
register_lazy(
    "guidance",
    "stable-diffusion-guidance",
    config=f"{_G}:StableDiffusionGuidanceConfig",
    builder=f"{_G}:StableDiffusionGuidance",
    description="SDS from Stable Diffusion 1.x / 2.x with view-dependent prompts and the Hash3D cache",
)
register_lazy(
    "geometry",
    "gaussian-splatting",
    config="hash3d.scene.gaussian_splatting:GaussianSplattingConfig",
    builder="hash3d.scene.gaussian_splatting:make_gaussians",
    description="3D Gaussians (threestudio-3dgs' geometry block) on the shared GaussianModel",
)
register_lazy(
    "exporter",
    "gaussian-mesh-exporter",
    config="hash3d.export.gaussian_exporter:GaussianMeshExporterConfig",
    builder="hash3d.export.gaussian_exporter:GaussianMeshExporter",
    description="3DGS .ply + a mesh of the Gaussians' opacity field",
)
register_lazy(
    "background",
    "neural-environment-map-background",
    config="hash3d.render.env_map:NeuralEnvironmentMapConfig",
    builder="hash3d.render.env_map:NeuralEnvironmentMapBackground",
    description="background colour as an MLP of the ray direction",
)
register_lazy(
    "background",
    "gaussian-mvdream-neural-environment-map-background",
    config="hash3d.render.env_map_aug:AugmentedEnvironmentMapConfig",
    builder="hash3d.render.env_map_aug:AugmentedEnvironmentMapBackground",
    description="neural environment map whose training views may turn pure black or white (threestudio-3dgs)",
)
