"""Text to 3D with the shipped Hash3D-mini-sd model: the pipelines behind `hash3d.demo --text`, and the text quality
harness on top of them (does a text-to-3D pipeline make the described object, and does the Hash3D cache keep that?
measured on held-out captions of procedural objects; `bench/quality.py --task text` is its command line,
`tests/test_quality_text.py` its CI case).

- `cases`: held-out captions and their objects' ground-truth orbit (16 views at elevation 30°)
- `pipelines`: the text pipelines (DreamGaussian, dreamfusion-sd, gaussiandreamer-sd, magic3d-coarse-sd,
  gaussian_splatting_shading) with their `-mini` configs
- `harness`: runs, scores (PSNR / SSIM, silhouette IoU, colour error), table and JSON (the image harness's)
"""

from .cases import TextCase, make_text_case, text_case_ids
from .harness import TextHarnessConfig, run_text_harness
from .pipelines import TEXT_PIPELINES, TextPipeline, text_pipeline

__all__ = [
    "TEXT_PIPELINES",
    "TextCase",
    "TextHarnessConfig",
    "TextPipeline",
    "make_text_case",
    "run_text_harness",
    "text_case_ids",
    "text_pipeline",
]
