"""DreamGaussian's flat option files (dreamgaussian/dreamgaussian and the original Hash3D's dreamgaussian-hash3d):
the keys the original Hash3D fork added, read into our options (`hash3d.systems.dreamgaussian.config`)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..errors import did_you_mean
from .report import Report
from .rules import Context, Rule, has_path, off_only, set_path, to

# The original fork's table: cells of 20 deg, 20 deg, 0.1 and 20 timesteps, 3 entries a bucket, 200 buckets, and
# the deep-feature reuse of its DeepCache pipeline.
_ORIGINAL_CACHE = {
    "cache.enabled": True,
    "cache.mode": "features",
    "cache.cell_size": [20.0, 20.0, 0.1, 20.0],
    "cache.bucket_size": 3,
    "cache.n_buckets": 200,
    "cache.adaptive": False,
}


def _cache_p(ctx: Context, key: str, value: Any, block: Any) -> None:
    to("cache.policy.probability", float, absolute=True)(ctx, key, value, block)
    for path, default in _ORIGINAL_CACHE.items():
        ctx.put_default(path, default, "the original dreamgaussian-hash3d table")


RULES: dict[str, Rule] = {
    "cache_p": _cache_p,
    "guidance_scale": to("guidance.guidance_scale", float, absolute=True),
    "lambda_depth": off_only("the stage-2 depth smoothness loss"),
}


# Options of ours that change nothing here when switched on: (when it is on, why).
NO_EFFECT_WHEN_ON: dict[str, str] = {
    "gui": "no viewer here: the run is headless",
    "force_cuda_rast": "nvdiffrast's CUDA context is always used here",
}


def read_dreamgaussian(data: dict[str, Any], schema: type) -> tuple[dict[str, Any], Report]:
    """Flat DreamGaussian options -> ours; keys of ours are read as they are, unknown ones refused with the closest
    name."""
    report = Report()
    root = copy.deepcopy(data)
    ctx = Context(root=root, written=data, report=report)
    own = {f.name for f in dataclasses.fields(schema) if f.init}
    for key in list(root):
        if key in own and key in NO_EFFECT_WHEN_ON and root[key] is True:
            report.add(key, "no effect", NO_EFFECT_WHEN_ON[key])
        elif key in own:
            report.add(key, "as is")
        elif key in RULES:
            value = root.pop(key)
            RULES[key](ctx, key, value, data)
        else:
            report.add(key, "refused", f"unknown config key '{key}'{did_you_mean(key, [*own, *RULES])}")
    if not report.foreign:
        return data, report
    report.dialect = "dreamgaussian"
    for path, value, why in ctx.pending:
        if not has_path(root, path):
            set_path(root, path, value)
            report.add(path, "default", f"= {value!r} ({why})")
    return root, report
