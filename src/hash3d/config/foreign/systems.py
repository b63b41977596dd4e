"""Rules that hold for one upstream system only: what its code hard-codes or reads from keys of its own.

`SYSTEM_RULES[system_type][block path]` adds key rules; `SYSTEM_FINISH[system_type]` runs after the walk of a foreign
file (upstream behaviour written into the system's code rather than its config).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .rules import Context, Rule, also_ours, get_path, no_effect, off_only, only, same_as, set_path, to


def _gd_load_type(ctx: Context, key: str, value: Any, block: Any) -> None:
    if value == 0:
        ctx.put("system.init.kind", "shap_e", key, "-> system.init.kind = 'shap_e' (a Shap-E shape for the prompt)")
    else:
        ctx.refuse(key, f"load_type={value!r} (an SMPL body) is not provided here: use system.load_type=0 (Shap-E), or "
                        "system.init.kind=ply system.init.ply.path=FILE.ply for your own point cloud")  # fmt: skip


def _gd_radius(ctx: Context, key: str, value: Any, block: Any) -> None:
    # GaussianDreamer scales its Shap-E shape to radius x 0.4
    ctx.put("system.init.shap_e.scale", 0.4 * float(value), key,
            f"-> system.init.shap_e.scale = {0.4 * float(value):g} (radius x 0.4, as GaussianDreamer scales Shap-E)")


def _gd_finish(ctx: Context) -> None:
    """GaussianDreamer's code narrows the timestep range to [0.02, 0.55] after step 500; its camera sampler has its
    own defaults."""
    for key, late in (("min_step_percent", 0.02), ("max_step_percent", 0.55)):
        path = f"system.guidance.{key}"
        value = get_path(ctx.root, path, 0.98 if key == "max_step_percent" else 0.02)
        if isinstance(value, (int, float)) and value != late:
            schedule = [500, value, late, 501]
            set_path(ctx.root, path, schedule)
            ctx.report.add(path, "mapped", f"-> {schedule} (GaussianDreamer switches to {late} after step 500)")
    for key, value in (
        ("elevation_range", [-10.0, 60.0]),
        ("camera_distance_range", [4.0, 6.0]),
        ("camera_perturb", 0.0),
        ("center_perturb", 0.0),
        ("up_perturb", 0.0),
        ("eval_camera_distance", 6.0),
    ):
        ctx.put_default(f"data.{key}", value, "GaussianDreamer's camera sampler default")


def _magic123_second_weight(ctx: Context, key: str, value: Any, block: Any) -> None:
    # the original fork's magic123 weighs the guidance's `loss_sds` with lambda_sds (= lambda_sd in its files) and the
    # 3D guidance's with lambda_3d_sd; lambda_3d_sds sits beside it with the same value
    ours = {"lambda_sds": "lambda_sd", "lambda_3d_sds": "lambda_3d_sd"}[key.rpartition(".")[2]]
    if value == 0:
        ctx.report.add(key, "no effect", f"0 (the weight is system.loss.{ours})")
        return
    same_as(f"system.loss.{ours}", f"its weight is system.loss.{ours} here")(ctx, key, value, block)


_UNUSED_BY_3DGS = "unused: threestudio-3dgs' plain rasteriser ignores the material and background, as this system does"
# threestudio-3dgs' rasterisers pass debug=False to the CUDA rasteriser whatever the key says
_GAUSSIAN_RENDERER: dict[str, Rule] = {"debug": no_effect("rasteriser debugging aid; upstream ignores it too")}

SYSTEM_RULES: dict[str, dict[str, dict[str, Rule]]] = {
    "gaussian-splatting-zero123-system": {
        "system": {
            "material_type": no_effect(_UNUSED_BY_3DGS),
            "material": no_effect(_UNUSED_BY_3DGS),
            "background_type": no_effect(_UNUSED_BY_3DGS),
            "background": no_effect(_UNUSED_BY_3DGS),
        },
        "system.renderer": _GAUSSIAN_RENDERER,
        "system.loss": {
            # upstream raises when it is on: its rasteriser renders no normals
            "lambda_normal_smooth": off_only("the 2D normal smoothness loss (upstream's rasteriser renders no normals)"),
            "lambda_3d_normal_smooth": no_effect("read by nothing in upstream's gaussian_zero123 system"),
        },
    },
    "gaussian-splatting-system": {
        "data": {
            # the shading renders along unnormalised (z-depth) rays: positions = origin + depth x direction, and the
            # environment map is looked up with those directions
            "rays_d_normalize": only(False, "the shading uses unnormalised z-depth ray directions"),
        },
        "system.renderer": _GAUSSIAN_RENDERER,
    },
    "gaussiandreamer-system": {
        "system": {
            "load_type": _gd_load_type,
            "load_path": no_effect("used only with load_type=1"),
            "radius": _gd_radius,
            "optimizer": also_ours(no_effect("the Gaussians have their own Adam (system.lr), as in GaussianDreamer")),
        },
        "data": {"load_type": same_as("system.load_type", "the cameras follow the system's shape source")},
    },
    "magic123-system": {
        "system.loss": {
            "lambda_sds": also_ours(_magic123_second_weight, drop=True),
            "lambda_3d_sds": _magic123_second_weight,
            "lambda_sd_img": off_only("the guidance's image-space loss"),
            "lambda_normal_smoothness_2d": to("lambda_normal_smooth"),
        },
    },
}

SYSTEM_FINISH: dict[str, Callable[[Context], None]] = {
    "gaussiandreamer-system": _gd_finish,
}