"""Key rules of threestudio-layout files (threestudio, the original Hash3D's three forks, GaussianDreamer), by the
path of the block they sit in. Keys of ours are read as they are; only keys we do not have need a rule here.
"""

from __future__ import annotations

from typing import Any

from .rules import Context, Rule, join, mapping, no_effect, off_only, only, same_as, to
from .systems import SYSTEM_RULES
from .type_names import built_in_names

_WEIGHTING = {"sds": "sds", "dreamfusion": "sds", "uniform": "uniform", "fantasia3d": "fantasia3d"}
_CACHE_MODE = {"feature": "features", "features": "features", "noise": "noise"}
_LOGGER = "loggers are system.loggers (wandb, tensorboard); the CSV log is always written"
_SPEED = "memory/speed option of diffusers pipelines; the result is the same"


def _cell_size(ctx: Context, key: str, value: Any, block: Any) -> None:
    """delta_c (3 cell sizes) and delta_t (timestep cell) of the original's table -> cache.cell_size."""
    guidance = key.rpartition(".")[0]
    delta_c = block.get("delta_c", [20.0, 20.0, 0.1])
    delta_t = block.get("delta_t", 10.0)
    if key.endswith("delta_t") and "delta_c" in block:
        ctx.report.add(key, "mapped", f"-> {guidance}.cache.cell_size[3] (with delta_c)")
        return
    if len(list(delta_c)) != 3:
        ctx.refuse(join(guidance, "delta_c"), f"must be 3 cell sizes (elevation, azimuth, radius); got {delta_c!r}")
        return
    ctx.put(join(guidance, "cache.cell_size"), [float(v) for v in delta_c] + [float(delta_t)], key)


def _hash_table_kind(ctx: Context, key: str, value: Any, block: Any) -> None:
    kinds = {"Sim": False, "Adaptive": True}
    if value not in kinds:
        ctx.refuse(key, f"{value!r} is not supported: 'Sim' (a fixed grid, blended entries) or 'Adaptive'")
        return
    ctx.put(join(key.rpartition(".")[0], "cache.adaptive"), kinds[value], key)


def _cache_mode(ctx: Context, key: str, value: Any, block: Any) -> None:
    to("cache.mode", mapping(_CACHE_MODE, "cache_mode"))(ctx, key, value, block)


def _half_precision(ctx: Context, key: str, value: Any, block: Any) -> None:
    to("dtype", mapping({True: "fp16", False: "fp32"}, "half_precision_weights"))(ctx, key, value, block)


def _built_in_type(kind: str) -> Rule:
    """`system.<kind>_type` of a system that has no such key (its component is built in, e.g. a Gaussian
    rasteriser): accepted when it names that built-in component (`built_in` in the type table), else refused."""

    def rule(ctx: Context, key: str, value: Any, block: Any) -> None:
        system_type = str(ctx.root.get("system_type", ""))
        built = built_in_names(kind, system_type)
        if value in built:
            ctx.report.add(key, "no effect", f"{value!r} is built into {system_type}")
        elif built:
            ctx.refuse(key, f"{value!r}: {system_type} has the {kind} {built[0]!r} built in and no other; remove the "
                            f"key or set it to {built[0]!r}")  # fmt: skip
        else:
            ctx.refuse(key, f"{system_type} takes no {kind}: remove the key")

    return rule


GUIDANCE: dict[str, Rule] = {
    # the original Hash3D cache
    "cache_mode": _cache_mode,
    "cache_p": to("cache.policy.probability", float),
    "delta_c": _cell_size,
    "delta_t": _cell_size,
    "max_queue_length": to("cache.bucket_size", int),
    "hash_table_size": to("cache.n_buckets", int),
    "hash_table": _hash_table_kind,
    "N": no_effect("hash constants; buckets are assigned by our own hash"),
    "cache_layer_id": only(0, "the deep feature is taken at the shallowest cache point, cache.depth=1"),
    "cache_block_id": only(0, "the deep feature is taken at the shallowest cache point, cache.depth=1"),
    "use_global_noise": off_only("one noise for all samples"),
    # threestudio guidance options
    "weighting_strategy": to("weighting", mapping(_WEIGHTING, "weighting_strategy")),
    "half_precision_weights": _half_precision,
    "guidance_type": only("sds", "score distillation"),
    "pretrained_config": no_effect("a diffusers-layout model folder carries its own config"),
    "vram_O": no_effect(_SPEED),
    "enable_memory_efficient_attention": no_effect(_SPEED),
    "enable_sequential_cpu_offload": no_effect(_SPEED),
    "enable_attention_slicing": no_effect(_SPEED),
    "enable_channels_last_format": no_effect("a memory layout only (channels-last measured slower here and is not offered)"),
    "token_merging": off_only("token merging (ToMe)"),
    "token_merging_params": no_effect("token merging is off"),
    "use_sjc": off_only("score Jacobian chaining"),
    "var_red": only(True, "SDS with the noise subtracted"),
    "anneal_start_step": off_only("max_step_percent_annealed", "write max_step_percent as a schedule instead"),
    "max_step_percent_annealed": no_effect("used only with anneal_start_step"),
    "max_items_eval": no_effect("guidance evaluation images are not written here"),
    "return_rgb_1step_orig": no_effect("guidance evaluation images are not written here"),
    "return_rgb_multistep_orig": no_effect("guidance evaluation images are not written here"),
    "n_rgb_multistep_orig_steps": no_effect("guidance evaluation images are not written here"),
    "cond_image_path": same_as("data.image_path", "the guidance is conditioned on the data's image"),
    # stable-diffusion-unified-guidance
    "use_img_loss": off_only("HiFA's image-space loss"),
    "sqrt_anneal": off_only("HiFA's square-root timestep annealing"),
    "trainer_max_steps": no_effect("used only with sqrt_anneal"),
    "controlnet_model_name_or_path": off_only("ControlNet guidance"),
    "preprocessor": no_effect("used only with ControlNet"),
    "control_scale": no_effect("used only with ControlNet"),
    "lora_model_name_or_path": off_only("LoRA weights for the guidance model"),
    "vsd_phi_model_name_or_path": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_guidance_scale_phi": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_use_lora": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_lora_cfg_training": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_lora_n_timestamp_samples": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_use_camera_condition": no_effect("VSD is not used (guidance_type sds)"),
    "vsd_camera_condition_type": no_effect("VSD is not used (guidance_type sds)"),
}

RULES: dict[str, dict[str, Rule]] = {
    "": {},
    "data": {
        "rays_d_normalize": only(True, "camera rays are unit length (threestudio's default)"),
    },
    "trainer": {
        "devices": no_effect("one device, chosen by --gpu"),
        "accelerator": no_effect("the device is chosen by --gpu"),
        "strategy": no_effect("one device, chosen by --gpu"),
        "num_nodes": only(1, "one machine"),
        "logger": no_effect(_LOGGER),
        "callbacks": no_effect("the training loop's own callbacks"),
        "enable_checkpointing": no_effect("checkpoints follow the checkpoint block"),
        "enable_model_summary": no_effect("no model summary is printed"),
        "deterministic": no_effect("runs are seeded by seed"),
        "detect_anomaly": no_effect("debugging aid"),
        "check_val_every_n_epoch": no_effect("validation follows val_check_interval"),
        "max_epochs": no_effect("threestudio's data never ends an epoch: max_steps ends the run"),
        "accumulate_grad_batches": only(1, "one optimizer step per batch"),
        "gradient_clip_algorithm": only("norm", "gradient_clip_val clips the global norm"),
        "fast_dev_run": off_only("Lightning's fast_dev_run", "use trainer.max_steps=2 instead"),
        "limit_train_batches": only(1.0, "every step trains"),
        "reload_dataloaders_every_n_epochs": no_effect("threestudio's data never ends an epoch"),
    },
    "checkpoint": {
        "dirpath": no_effect("checkpoints go to <trial>/ckpts"),
        "filename": no_effect("checkpoint files are named as threestudio's: epoch=0-step=N.ckpt, last.ckpt"),
        "monitor": no_effect("checkpoints are kept by step, not by a metric"),
        "mode": no_effect("checkpoints are kept by step, not by a metric"),
        "verbose": no_effect("logging only"),
        "save_weights_only": no_effect("checkpoints always hold the optimizer state too"),
        "every_n_epochs": no_effect("threestudio's data never ends an epoch"),
        "auto_insert_metric_name": no_effect("checkpoint file names are fixed"),
        "save_on_train_epoch_end": no_effect("threestudio's data never ends an epoch"),
    },
    "system": {
        "renderer_type": _built_in_type("renderer"),
        "material_type": _built_in_type("material"),
        "background_type": _built_in_type("background"),
        "prompt_processor_type": no_effect("the system reads the prompt; the guidance model encodes it"),
        "prompt_processor": no_effect("this system takes no prompt"),
        "geometry_convert_from": off_only("initialising from another run's geometry", "use system.weights=CKPT"),
        "geometry_convert_inherit_texture": no_effect("used only with geometry_convert_from"),
        "geometry_convert_override": no_effect("used only with geometry_convert_from"),
    },
    "system.freq": {
        "ref_only_steps": off_only("reference-view-only warm-up steps"),
        "guidance_eval": no_effect("guidance evaluation images are not written here"),
    },
    "system.loss": {
        "lambda_depth": off_only("the depth loss"),
        "lambda_depth_rel": off_only("the relative depth loss"),
        "lambda_normal": off_only("the normal-map loss"),
        "lambda_rgb_tv": off_only("the RGB total-variation loss"),
        "lambda_z_variance": off_only("the z-variance loss"),
        "lambda_sd": to("lambda_sds"),  # the unified guidance names its loss loss_sd
    },
    "system.prompt_processor": {
        "pretrained_model_name_or_path": same_as(
            "system.guidance.pretrained_model_name_or_path", "the prompt is encoded by the guidance model's text encoder"
        ),
        "use_cache": no_effect("prompt embeddings are computed once per run"),
        "spawn": no_effect("prompt embeddings are computed in this process"),
        "use_perp_neg": off_only("Perp-Neg"),
        "front_threshold": to("system.guidance.front_threshold", absolute=True),
        "back_threshold": to("system.guidance.back_threshold", absolute=True),
        "overhead_threshold": to("system.guidance.overhead_threshold", absolute=True),
        "view_dependent_prompting": to("system.guidance.view_dependent_prompting", absolute=True),
    },
    "system.geometry": {
        "n_input_dims": only(3, "3D points"),
        "isosurface": only(True, "meshes are extracted from the density"),
        "isosurface_method": only("mt", "marching tetrahedra/cubes on a grid"),
        "isosurface_chunk": no_effect("memory option"),
        "isosurface_deformable_grid": off_only("a deformable isosurface grid"),
        "isosurface_remove_outliers": no_effect("see isosurface_outlier_fraction"),
        "isosurface_outlier_n_faces_threshold": to("isosurface_outlier_fraction", float),
        "anneal_density_blob_std_config": off_only("annealing the density blob"),
    },
    "system.material": {
        "albedo_activation": to("system.geometry.albedo_activation", absolute=True),
    },
    "system.background": {
        "share_aug_bg": off_only("one random background shared by the batch"),
    },
    "system.renderer": {
        "radius": same_as("system.geometry.radius", "the renderer uses the geometry's bounding box"),
        "return_comp_normal": no_effect("normals are rendered whenever a loss or an image needs them"),
        "return_normal_perturb": no_effect("perturbed normals are computed whenever lambda_3d_normal_smooth > 0"),
        "randomized": to("stratified", bool),
        "far_plane": no_effect("rays end at the bounding box"),
        "estimator": only("occgrid", "an occupancy grid skips empty space"),
        "grid_prune": only(True, "the occupancy grid prunes samples"),
        "proposal_network_config": no_effect("used only with estimator=proposal"),
        "prop_optimizer_config": no_effect("used only with estimator=proposal"),
        "prop_scheduler_config": no_effect("used only with estimator=proposal"),
        "num_samples_per_ray_proposal": no_effect("used only with estimator=proposal"),
        "num_samples_per_ray_importance": no_effect("used only with estimator=importance"),
    },
    "system.exporter": {
        "save_uv": to("save_texture", bool),
        "save_normal": off_only("exporting vertex normals"),
        "texture_format": no_effect("textures are written as PNG"),
        "xatlas_chart_options": off_only("custom xatlas chart options"),
        "xatlas_pack_options": off_only("custom xatlas pack options"),
        "context_type": no_effect("the rasteriser follows the device"),
    },
    "system.guidance": GUIDANCE,
    "system.guidance_3d": GUIDANCE,  # magic123's second guidance (Zero123 next to Stable Diffusion)
}

# A key of ours whose upstream values are spelt differently.
VALUE_ALIASES: dict[str, dict[Any, Any]] = {
    "activation": {"ReLU": "relu", "SiLU": "silu"},
    "light_sample_strategy": {"dreamfusion3dgs": "dreamfusion"},
    "density_activation": {"trunc_exp": "exp"},
    "normal_type": {None: "none"},  # ours is the truncated exp (its gradient clamped, as threestudio's)
    "prune_alpha_threshold": {True: 0.01, False: 0.0},
    "every_n_train_steps": {0: None},  # Lightning: 0 = no periodic checkpoints
}


def value_alias(key: str, value: Any) -> Any:
    for k, v in VALUE_ALIASES.get(key, {}).items():
        if value == k and type(value) is type(k):
            return v
    return value


def rules_at(path: str, system_type: str) -> dict[str, Rule]:
    """The key rules of the block at `path` (threestudio's, plus those of the upstream system)."""
    merged = dict(RULES.get(path, {}))
    merged.update(SYSTEM_RULES.get(system_type, {}).get(path, {}))
    return merged
