"""A tried cache request of the SDS step as two CUDA graphs around one host read.

Answering a request from the cache takes little GPU work but, step by step, some sixty small kernel launches
(forward diffusion, the UNet batch, the table query, classifier-free guidance, the SDS gradient): at SDS sizes the
host, not the GPU, sets the cost of a hit. Here:

    graph P (prepare): the cache keys, x_t, the table query and the number of hits, and in features mode the
    conditioning for the cameras and the UNet batch (a noise-mode answer needs neither);
    graph Q (answer): the cached UNet output (the stored outputs, or the shallow blocks on the stored deep features),
    classifier-free guidance, the SDS gradient and the loss value;
    host: read the number of hits (the one synchronisation a tried request makes). Q's results are used only when every
    sample hit. In noise mode Q is launched right behind P, before the read (its work is small, and dropped when some
    sample missed); in features mode only after the read, when every sample hit.

Otherwise the guidance goes on with its host-dispatched path, handing over P's keys, x_t, query and (features mode)
conditioning, so the table is not queried twice. Both graphs read the table's storage in place: they are captured again whenever it is replaced.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ...cuda_graphs import graph_capture
from ..cache_graph import StorageWatch
from .losses import sds_loss_value


@dataclass
class HitAnswer:
    all_hit: bool
    hit: torch.Tensor
    grad: torch.Tensor | None = None
    noise_pred: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    """0.5·scale·‖grad‖² (`sds.sds_loss_value`)."""
    x_t: torch.Tensor | None = None
    context: torch.Tensor | None = None
    """The UNet's encoder states for the cameras (None in noise mode: the host path computes them)."""
    keys: torch.Tensor | None = None
    query: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """(values, hit, finite) for `UNetCache.request(query=...)` when some sample missed."""


@dataclass
class _Captured:
    prepare: torch.cuda.CUDAGraph
    answer: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    cameras: torch.Tensor
    clip: torch.Tensor | None
    x_t: torch.Tensor
    context: torch.Tensor | None
    keys: torch.Tensor
    values: torch.Tensor
    hit: torch.Tensor
    finite: torch.Tensor
    n_hit: torch.Tensor
    packed: torch.Tensor
    """Q's outputs in one buffer (one copy out per step): grad, noise_pred, loss."""
    shape: torch.Size


def _pack(grad: torch.Tensor, noise_pred: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([grad.reshape(-1).float(), noise_pred.reshape(-1).float(), loss.reshape(1).float()])


def _unpack(packed: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = shape.numel()
    return packed[:n].view(shape), packed[n : 2 * n].view(shape), packed[2 * n]


class HitStepGraphs:
    """One pair of graphs per input signature of an SDS guidance with a cache attached (CUDA graphs on)."""

    def __init__(self, guidance, cache, capture: bool = True):
        self.guidance = guidance
        self.cache = cache
        self.capture = capture
        """False: run the same two stages eagerly (CPU tests, debugging)."""
        self.captured: dict[tuple, _Captured] = {}
        self.captures = 0
        """Graph pairs captured in all (captures dropped with replaced table storage included)."""
        self.pool = None
        self._storage = StorageWatch(cache.table)
        me = weakref.ref(self)  # no reference cycle through the cache: freed as soon as the guidance drops it
        cache.add_graph_count(lambda: 2 * me().captures if me() is not None else 0)

    def __call__(
        self,
        latents: torch.Tensor,  # [B, C, h, w] x_0 (detached)
        t: torch.Tensor,  # [B]
        noise: torch.Tensor,  # [B, C, h, w]
        cameras: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # elevation, azimuth, distance [B] each
        clip: float | None,
        loss_scale: float = 1.0,
    ) -> HitAnswer:
        if self._storage.changed():
            self.captured.clear()
            self.pool = None
        inputs = (latents, t, noise) + tuple(cameras)
        if not self.capture:
            with torch.no_grad():
                x_t, context, keys, x_in, t_in, ctx, values, hit, finite, n_hit = self._prepare(*inputs)
                if int(n_hit) == latents.shape[0]:
                    noise_pred, grad, loss = self._answer(x_t, x_in, t_in, ctx, values, t, noise, clip, loss_scale,
                                                          latents.dtype)
                    return HitAnswer(True, hit, grad=grad, noise_pred=noise_pred, loss=loss)
            return HitAnswer(False, hit, x_t=x_t, context=context, keys=keys, query=(values, hit, finite))
        signature = tuple((tuple(a.shape), a.dtype) for a in inputs) + (clip is None, loss_scale)
        c = self.captured.get(signature)
        if c is None:
            c = self.captured[signature] = self._capture(inputs, clip is not None, loss_scale)
            self.captures += 1
        for buffer, value in zip(c.inputs, inputs[:3]):
            buffer.copy_(value)
        torch.stack(cameras, out=c.cameras)  # one launch for the three camera tensors
        if c.clip is not None:
            c.clip.fill_(clip)
        c.prepare.replay()
        speculative = self.cache.config.mode == "noise"  # a cheap answer: launch it before the host read
        if speculative:
            c.answer.replay()
        if int(c.n_hit) == latents.shape[0]:
            if not speculative:
                c.answer.replay()
            grad, noise_pred, loss = _unpack(c.packed.clone(), c.shape)
            return HitAnswer(True, c.hit.clone(), grad=grad, noise_pred=noise_pred, loss=loss)
        hit = c.hit.clone()
        context = None if c.context is None else c.context.clone()
        return HitAnswer(False, hit, x_t=c.x_t.clone(), context=context, keys=c.keys.clone(),
                         query=(c.values.clone(), hit, c.finite.clone()))

    def _capture(self, inputs: tuple, with_clip: bool, loss_scale: float) -> _Captured:
        g, cache = self.guidance, self.cache
        static = [a.clone() for a in inputs[:3]]
        cameras = torch.stack(inputs[3:])
        static += list(cameras.unbind(0))  # views of the stacked buffer
        latents, t, noise = static[:3]
        clip = torch.zeros((), device=latents.device) if with_clip else None
        table = cache.table
        if cache.config.mode == "features":  # run the shallow blocks once outside capture (kernel choice, lazy init)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                x_in, t_in, ctx = g.unet_batch(g.diffuse(latents, t, noise), t, g.conditioning(*static[3:]))
                values = torch.zeros((latents.shape[0],) + tuple(table.value_shape), dtype=table.value_dtype,
                                     device=x_in.device)  # [B, groups, ...] as a query returns them
                cache.cached_output(x_in, t_in, ctx, values)
            torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        prepare, answer = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.no_grad():
            with graph_capture(prepare, self.pool):
                x_t, context, keys, x_in, t_in, ctx, values, hit, finite, n_hit = self._prepare(*static)
            with graph_capture(answer, self.pool):
                noise_pred, grad, loss = self._answer(x_t, x_in, t_in, ctx, values, t, noise, clip, loss_scale,
                                                      latents.dtype)
                packed = _pack(grad, noise_pred, loss)
        return _Captured(prepare, answer, static[:3], cameras, clip, x_t, context, keys, values, hit, finite,
                         n_hit, packed, grad.shape)

    def _prepare(self, latents, t, noise, elevation, azimuth, distances):
        """In noise mode an answer needs neither the conditioning nor the UNet batch: they are left to the host path
        (context None), which only a request with a miss takes."""
        g = self.guidance
        keys = g.cache_keys(elevation, azimuth, distances, t)
        x_t = g.diffuse(latents, t, noise)
        context = x_in = t_in = ctx = None
        if self.cache.config.mode != "noise":
            context = g.conditioning(elevation, azimuth, distances)
            x_in, t_in, ctx = g.unet_batch(x_t, t, context)
        values, hit, finite = self.cache.query_core(keys, x_t)
        return x_t, context, keys, x_in, t_in, ctx, values, hit, finite, hit.sum()

    def _answer(self, x_t, x_in, t_in, ctx, values, t, noise, clip, loss_scale, latents_dtype):
        g = self.guidance
        noise_pred = g.guided_noise(self.cache.cached_output(x_in, t_in, ctx, values), x_t, t)
        grad = g.sds_gradient(noise_pred, noise, t, clip)
        return noise_pred, grad, sds_loss_value(grad.to(latents_dtype), loss_scale)
