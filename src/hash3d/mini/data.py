"""Training data for Hash3D-mini: a pool of procedural objects, each rendered from several random views, kept on
the training device and refreshed a few objects per step (round robin), so that rendering costs a bounded share of
each step however fast the renderer is.

The pool is fully determined by `next_id`: it holds the objects with ids [next_id − P, next_id), the one with id i
in slot i mod P, so a resumed run rebuilds exactly the pool it stopped with. Training ids stay below
`objects.HELD_OUT_ID_BASE`.
"""

from __future__ import annotations

import torch

from .objects import HELD_OUT_ID_BASE, VIEW_ELEVATION_RANGE, make_objects, sample_views
from .render import on_white, render

__all__ = ["ViewPool", "render_ids"]


def render_ids(ids: torch.Tensor, elevation: torch.Tensor, azimuth: torch.Tensor, *, compile_step: bool = False,
               chunk: int = 256) -> torch.Tensor:
    """Render object ids[i] from every camera in row i: ids [N], elevation/azimuth [N, V] -> RGB on white
    [N, V, 3, 64, 64] in [0, 1]."""
    n, v = elevation.shape
    obj = make_objects(ids)
    obj = obj.take(torch.arange(n, device=ids.device).repeat_interleave(v))
    rgba = render(obj, elevation.reshape(-1), azimuth.reshape(-1), compile_step=compile_step, chunk=chunk)
    return on_white(rgba).view(n, v, 3, rgba.shape[-2], rgba.shape[-1])


class ViewPool:
    """P objects × V views: RGB (fp16, on white), cameras, and once the VAE is frozen, the views' latents."""

    def __init__(self, n_objects: int, n_views: int, device: torch.device, compile_render: bool = False,
                 size: int = 64, elevation_range: tuple[float, float] = VIEW_ELEVATION_RANGE):
        if n_views < 2:
            raise ValueError("the pool needs at least 2 views per object to make (input, target) pairs")
        self.P, self.V, self.device = n_objects, n_views, device
        self.compile_render = compile_render
        self.elevation_range = elevation_range
        self.rgb = torch.ones(n_objects, n_views, 3, size, size, dtype=torch.float16, device=device)
        self.elevation = torch.zeros(n_objects, n_views, device=device)
        self.azimuth = torch.zeros(n_objects, n_views, device=device)
        self.latents: torch.Tensor | None = None
        self.encoder = None
        self.next_id = 0

    def _render_into(self, ids: torch.Tensor) -> None:
        elevation, azimuth = sample_views(ids, self.V, elevation_range=self.elevation_range)
        # big chunks keep the GPU busy (each march step is ~80 element-wise kernels); small ones suit a CPU's cache
        chunk = 1024 if self.device.type == "cuda" else 128
        rgb = render_ids(ids, elevation, azimuth, compile_step=self.compile_render, chunk=chunk)
        slots = ids % self.P
        self.rgb[slots] = rgb.to(torch.float16)
        self.elevation[slots], self.azimuth[slots] = elevation, azimuth
        if self.encoder is not None:
            self.latents[slots] = self.encoder(rgb.flatten(0, 1)).view(len(ids), self.V, *self.latents.shape[2:])

    def fill(self, next_id: int, chunk_objects: int = 512) -> None:
        """Rebuild the pool as it is when `next_id` objects have been drawn (at least P)."""
        next_id = max(int(next_id), self.P)
        if next_id >= HELD_OUT_ID_BASE:
            raise ValueError("training object ids ran into the held-out range")
        for start in range(next_id - self.P, next_id, chunk_objects):
            ids = torch.arange(start, min(start + chunk_objects, next_id), device=self.device)
            self._render_into(ids)
        self.next_id = next_id

    def refresh(self, count: int) -> None:
        """Replace the `count` oldest objects by new ones."""
        count = max(0, min(int(count), self.P))
        if count == 0:
            return
        ids = torch.arange(self.next_id, self.next_id + count, device=self.device)
        self._render_into(ids)
        self.next_id += count

    @torch.no_grad()
    def set_encoder(self, encoder, chunk: int = 1024) -> None:
        """Encode every view with `encoder` (RGB [B, 3, H, W] in [0, 1] -> latents) now and on every refresh."""
        self.encoder = encoder
        flat = self.rgb.flatten(0, 1)
        out = [encoder(flat[i:i + chunk].float()) for i in range(0, flat.shape[0], chunk)]
        lat = torch.cat(out)
        self.latents = lat.view(self.P, self.V, *lat.shape[1:])

    def sample_views(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (object, view) indices [batch] each."""
        p = torch.randint(0, self.P, (batch,), generator=generator, device=self.device)
        v = torch.randint(0, self.V, (batch,), generator=generator, device=self.device)
        return p, v

    def sample_pairs(self, batch: int, generator: torch.Generator, same_view: float = 0.05):
        """Random (object, input view, target view) index triples; the target differs from the input except with
        probability `same_view` (so the model also learns that Δcamera = 0 means the input itself)."""
        p, i = self.sample_views(batch, generator)
        shift = torch.randint(1, self.V, (batch,), generator=generator, device=self.device)
        same = torch.rand(batch, generator=generator, device=self.device) < same_view
        j = torch.where(same, i, (i + shift) % self.V)
        return p, i, j
