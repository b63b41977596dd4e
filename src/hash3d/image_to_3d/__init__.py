"""Image to 3D with the shipped Hash3D-mini model: the runner behind `hash3d.demo`, and the quality harness on top of
it (does the Hash3D cache keep image-to-3D quality? measured on held-out procedural objects; `bench/quality.py` is
its command line, `tests/test_quality.py` its CI case).

- `cases`: held-out objects (ids >= 10**12 + offset), input view at elevation 15°, 16 ground-truth views at 30°
- `variants`: cache variants by name ('off', 'features@0.3', 'noise@1', 'features+adaptive@0.1')
- `pipeline`: the DreamGaussian mini pipeline run in-process (also what `hash3d.demo` runs), threestudio-hash3d's
  stable-zero123-mini and magic123-coarse-sd-mini (Hash3D-mini and Hash3D-mini-sd at once), views of a result
- `random_model`: the random-weight twin of the mini model (the quality floor; Magic123's floor also swaps its
  Stable Diffusion for `hash3d.mini.sd_model.write_random_sd_twin`'s twin)
- `harness`: runs, scores (`hash3d.eval`), table and JSON
"""

from .cases import Case, make_case
from .harness import HarnessConfig, format_table, run_harness
from .variants import Variant, default_variants, parse_variant, parse_variants

__all__ = [
    "Case",
    "HarnessConfig",
    "Variant",
    "default_variants",
    "format_table",
    "make_case",
    "parse_variant",
    "parse_variants",
    "run_harness",
]
