"""Hash3D-mini: a small Zero123-style novel-view model the project trains itself on procedural objects.

- `objects`: procedural objects (1–4 SDF primitives), deterministic per integer id; held-out ids never trained on.
- `render`: batched sphere tracer (threestudio cameras from `hash3d.data.cameras`), straight RGBA on white.
- `model`: the parts in the diffusers Zero123 layout (`load_zero123` loads the folder) and the conditioning.
- `train`: the training loop (`tools/train_mini.py`), resumable, with model card and held-out evaluation.
- `train_loop`: what both trainers share (base config and flags, EMA, compile fallback, the step loop, checkpoints).

Hash3D-mini-sd, the text-to-image sibling in the Stable Diffusion layout (`tools/train_mini_sd.py`):
- `colors` / `text_data`: named colours; captions from object parameters with the SD guidance's view suffixes.
- `tokenizer`: a CLIP BPE tokenizer written by the project (every caption word one token).
- `sd_model` / `train_sd` / `evaluate_sd`: parts and folder, the one-command training loop, held-out scores + card.
- `caption_score`: colour and shape agreement of generated images with the described object's renders.
"""

from .objects import HELD_OUT_ID_BASE, KINDS, TEXTURES, Objects, make_objects, sample_views
from .render import CAMERA_DISTANCE, FOVY_DEG, IMAGE_SIZE, on_white, render

__all__ = [
    "CAMERA_DISTANCE",
    "FOVY_DEG",
    "HELD_OUT_ID_BASE",
    "IMAGE_SIZE",
    "KINDS",
    "TEXTURES",
    "Objects",
    "make_objects",
    "on_white",
    "render",
    "sample_views",
]
