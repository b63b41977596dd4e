"""Building blocks of the multi-view UNet (MVDream / ImageDream): residual blocks, the transformer whose
self-attention runs jointly over the views of a set, decoupled image cross-attention, and the image-token resampler.

Module and parameter names follow the original latent-diffusion ("openaimodel") checkpoints, as stored in the
converted diffusers folders (`ashawkey/mvdream-sd2.1-diffusers`, `ashawkey/imagedream-ipmv-diffusers`), so that
their safetensors load without renaming. Attention goes through PyTorch's scaled-dot-product attention.

Row order. A UNet batch holds B sets of F views. `ViewLayout.view_major=False` is the original order, views of a set
next to each other (row = b·F + f); `True` puts the sets of one view next to each other (row = f·B + b), which is
what the Hash3D cache needs (sample i of every group of rows belongs to cache key i). Only the joint self-attention
and the reference-frame overwrite depend on it; every other layer works row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn


@dataclass(frozen=True)
class ViewLayout:
    """How the rows of a UNet batch group into sets of `num_frames` views (see the module docstring)."""

    num_frames: int = 1
    view_major: bool = False

    def sets(self, rows: int) -> int:
        if rows % self.num_frames:
            raise ValueError(f"UNet batch {rows} is not a multiple of num_frames={self.num_frames}")
        return rows // self.num_frames

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, L, C] -> [sets, F·L, C]: the tokens of all views of a set in one sequence."""
        rows, length, channels = x.shape
        sets, frames = self.sets(rows), self.num_frames
        if self.view_major:
            x = x.view(frames, sets, length, channels).transpose(0, 1)
        return x.reshape(sets, frames * length, channels)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `joint`."""
        sets, tokens, channels = x.shape
        frames = self.num_frames
        x = x.view(sets, frames, tokens // frames, channels)
        if self.view_major:
            x = x.transpose(0, 1)
        return x.reshape(sets * frames, tokens // frames, channels)

    def last_frame(self, rows: int) -> torch.Tensor:
        """Row indices of every set's last view (ImageDream's reference frame)."""
        sets, frames = self.sets(rows), self.num_frames
        if self.view_major:
            return torch.arange((frames - 1) * sets, frames * sets)
        return torch.arange(frames - 1, rows, frames)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, heads·d] -> [N, heads, L, d]."""
    n, length, _ = x.shape
    return x.view(n, length, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, L, d] -> [N, L, heads·d]."""
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)


class CrossAttention(nn.Module):
    """Multi-head attention without q/k/v biases. With `ip_tokens` > 0 the last `ip_tokens` context tokens are image
    tokens, attended with their own keys and values and added: attn(q, text) + ip_weight·attn(q, image)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, ip_tokens: int = 0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.ip_tokens = ip_tokens
        self.ip_weight = 1.0
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if ip_tokens > 0:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def _attend(self, q: torch.Tensor, context: torch.Tensor, to_k: nn.Linear, to_v: nn.Linear) -> torch.Tensor:
        k, v = _heads(to_k(context), self.heads), _heads(to_v(context), self.heads)
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = _heads(self.to_q(x), self.heads)
        if self.ip_tokens > 0:
            text, image = context[:, : -self.ip_tokens], context[:, -self.ip_tokens :]
            out = self._attend(q, text, self.to_k, self.to_v)
            out = out + self.ip_weight * self._attend(q, image, self.to_k_ip, self.to_v_ip)
        else:
            out = self._attend(q, context, self.to_k, self.to_v)
        return self.to_out(_merge(out))


class BasicTransformerBlock3D(nn.Module):
    """Self-attention over the tokens of all views of a set, then per-view cross-attention, then a GEGLU MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, ip_tokens: int = 0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim, mult=4, activation_fn="geglu")
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, ip_tokens)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, layout: ViewLayout) -> torch.Tensor:
        joint = layout.joint(x)
        x = layout.split(self.attn1(self.norm1(joint)) + joint)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm, linear projection in, transformer blocks over the h·w tokens, linear projection out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1, ip_tokens: int = 0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim, ip_tokens) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, layout: ViewLayout) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, layout)
        out = self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)
        return out + x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected embedding, GroupNorm-SiLU-conv; 1×1 conv skip when channels change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionedSequence(nn.Sequential):
    """A sequence of layers where residual blocks also take the embedding and transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, layout: ViewLayout) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, layout)
            else:
                x = layer(x)
        return x


class PerceiverAttention(nn.Module):
    """Latent queries attend to the image features and to themselves (IP-Adapter-Plus)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        q = _heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads))
        return self.to_out(_merge(out))


class Resampler(nn.Module):
    """Image features [N, T, embedding_dim] -> `num_queries` image tokens [N, num_queries, output_dim]."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_queries: int, embedding_dim: int,
                 output_dim: int, ff_mult: int = 4):  # fmt: skip
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(
                    nn.LayerNorm(dim),
                    nn.Linear(dim, dim * ff_mult, bias=False),
                    nn.GELU(),
                    nn.Linear(dim * ff_mult, dim, bias=False),
                ),
            ])
            for _ in range(depth)
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        features = self.proj_in(features)
        for attention, mlp in self.layers:
            latents = attention(features, latents) + latents
            latents = mlp(latents) + latents
        return self.norm_out(self.proj_out(latents))
