"""DreamGaussian (image -> 3D Gaussians -> textured mesh) with the Hash3D cache; front-end: dreamgaussian-hash3d/.

- `config`: `DreamGaussianConfig` (DreamGaussian's option names and defaults + Hash3D's), `load_options`
- `stage1`: `run_stage1` (main.py): Gaussians, .ply, coarse mesh, report
- `stage2`: `run_stage2` (main2.py): texture refinement through the mesh rasteriser
- `common`: cameras in DreamGaussian's frame and sign convention, input/output checks, guidance, video, report
- `cli`: the three command lines
"""

from .config import DreamGaussianConfig, DreamGaussianError, GuidanceOptions, load_options

__all__ = ["DreamGaussianConfig", "DreamGaussianError", "GuidanceOptions", "load_options"]
