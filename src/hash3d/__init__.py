"""Hash3D: reuse diffusion-model work across nearby camera poses and timesteps in SDS 3D generation."""

__version__ = "0.1.0"
