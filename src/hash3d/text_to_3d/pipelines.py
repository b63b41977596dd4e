"""The text-to-3D pipelines that the text quality harness and `hash3d.demo --text` run, each through its front-end's
own entry (`hash3d.image_to_3d.pipeline`: DreamGaussian in-process, threestudio-style launchers through
`hash3d.launch`), with its `-mini` config: the model card's cameras (distance 3.8, fovy 20°, 64 px, on white) and the
shipped Hash3D-mini-sd. Each config has a `_hash3d` twin that differs only in its cache block.

Views of a result are named in threestudio's terms (elevation above the horizon, world azimuth: 0 is the
caption's front).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hash3d.config.errors import ConfigError
from hash3d.image_to_3d.pipeline import PipelineRun, run_dreamgaussian, run_threestudio
from hash3d.image_to_3d.variants import Variant
from hash3d.shipped import DG_CONFIGS, GD_CONFIGS, MINI_SD_MODEL, TS_CONFIGS, require

__all__ = ["TEXT_PIPELINES", "TextPipeline", "text_pipeline"]


@dataclass(frozen=True)
class TextPipeline:
    name: str
    front_end: Literal["dreamgaussian", "threestudio"]
    """'dreamgaussian' (main.py's stage 1, in-process) or 'threestudio' (a launch.py, through hash3d.launch)."""
    folder: Path
    config_name: str
    """The cache-off config; the cache-on twin is `<config_name>_hash3d.yaml` in the same folder."""

    def config(self, variant: Variant) -> Path:
        name = f"{self.config_name}_hash3d.yaml" if variant.enabled else f"{self.config_name}.yaml"
        return require(self.folder / name, f"the {self.name} mini config")

    def run(self, variant: Variant, prompt: str, outdir: str | Path, *, model: str | Path = MINI_SD_MODEL,
            overrides: list[str] | tuple[str, ...] = (), test_views: tuple[float, int, int] | None = None,
            progress: bool = True, finish: bool = False) -> PipelineRun:
        """Train on `prompt`; `test_views` = (elevation, n, size) as `run_threestudio`'s (threestudio-style runs can
        only be scored at the test orbit they rendered; DreamGaussian's result renders any view). `finish` also runs
        what follows training: DreamGaussian's stage 2 (texture), the launchers' --export (mesh)."""
        if self.front_end == "dreamgaussian":
            return run_dreamgaussian(variant, None, outdir, model=model, overrides=list(overrides), refine=finish,
                                     progress=progress, config=self.config(variant), prompt=prompt)
        return run_threestudio(variant, None, outdir, model=model, overrides=overrides, test_views=test_views,
                               export=finish, progress=progress, config=self.config(variant), prompt=prompt,
                               eval_block="data")


TEXT_PIPELINES = {
    p.name: p
    for p in (
        TextPipeline("dreamgaussian", "dreamgaussian", DG_CONFIGS, "text_mini"),
        TextPipeline("dreamfusion-sd", "threestudio", TS_CONFIGS, "dreamfusion-sd-mini"),
        TextPipeline("gaussiandreamer-sd", "threestudio", GD_CONFIGS, "gaussiandreamer-sd-mini"),
        TextPipeline("magic3d-coarse-sd", "threestudio", TS_CONFIGS, "magic3d-coarse-sd-mini"),
        TextPipeline("gaussian_splatting_shading", "threestudio", TS_CONFIGS, "gaussian_splatting_shading-mini"),
    )
}


def text_pipeline(name: str) -> TextPipeline:
    if name not in TEXT_PIPELINES:
        raise ConfigError(f"unknown text pipeline {name!r}; choose from {', '.join(TEXT_PIPELINES)}")
    return TEXT_PIPELINES[name]
