"""The multi-view UNet of MVDream and ImageDream as a diffusers model (`from_pretrained` / `save_pretrained`).

An SD-2.1-style latent-diffusion UNet whose timestep embedding gets a camera embedding added (one 4×4
camera-to-world matrix per view, flattened), whose self-attention runs jointly over the tokens of all views of a
set, and, for ImageDream (`ip_dim` > 0), with an image-token resampler, decoupled image cross-attention, and the
reference image's latent written into the last view of every set.

Config keys and parameter names are those of the converted checkpoints `ashawkey/mvdream-sd2.1-diffusers` and
`ashawkey/imagedream-ipmv-diffusers` (`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`), so their
folders load with `MultiViewUNetModel.from_pretrained(path, subfolder="unet")`; the keys `image_size` (the latent
side) and `use_checkpoint` are kept as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .multiview_blocks import (
    ConditionedSequence,
    Downsample,
    ResBlock,
    Resampler,
    SpatialTransformer3D,
    Upsample,
    ViewLayout,
)

__all__ = ["MultiViewUNetModel", "MultiViewUNetOutput", "IMAGE_FEATURE_DIM"]

IMAGE_FEATURE_DIM = 1280
"""Width of the image features ImageDream's resampler takes (OpenCLIP ViT-H/14 hidden states; fixed upstream)."""


@dataclass
class MultiViewUNetOutput(BaseOutput):
    sample: torch.Tensor


class MultiViewUNetModel(ModelMixin, ConfigMixin):
    """MVDream (ip_dim = 0) or ImageDream (ip_dim > 0) multi-view UNet.

    forward(x [rows, C, h, w], timesteps [rows], context [rows, 77, context_dim], camera [rows, camera_dim],
    num_frames=F, ip [rows, T, 1280], ip_img [sets or rows, C, h, w], view_major) where rows = sets·F in the order
    `view_major` names (see `multiview_blocks`).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        model_channels: int = 320,
        out_channels: int = 4,
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        channel_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        use_checkpoint: bool = False,
        camera_dim: int | None = 16,
        ip_dim: int = 0,
    ):
        super().__init__()
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if ip_dim > 0:
            self.image_embed = Resampler(
                dim=context_dim, depth=4, dim_head=64, heads=12, num_queries=ip_dim,
                embedding_dim=IMAGE_FEATURE_DIM, output_dim=context_dim, ff_mult=4,
            )  # fmt: skip

        def transformer(ch: int) -> SpatialTransformer3D:
            return SpatialTransformer3D(ch, ch // num_head_channels, num_head_channels, context_dim, transformer_depth, ip_dim)

        self.input_blocks = nn.ModuleList([ConditionedSequence(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(ConditionedSequence(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(ConditionedSequence(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = ConditionedSequence(ResBlock(ch, emb_dim), transformer(ch), ResBlock(ch, emb_dim))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(ConditionedSequence(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    @property
    def num_views_extra(self) -> int:
        """Views a set has besides the rendered ones: ImageDream's reference frame (1), none for MVDream."""
        return 1 if self.config.ip_dim > 0 else 0

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        camera: torch.Tensor | None = None,
        num_frames: int = 1,
        ip: torch.Tensor | None = None,
        ip_img: torch.Tensor | None = None,
        view_major: bool = False,
        return_dict: bool = True,
    ) -> MultiViewUNetOutput | tuple[torch.Tensor]:
        layout = ViewLayout(num_frames, view_major)
        rows = x.shape[0]
        layout.sets(rows)  # checks that the batch splits into sets
        t = timesteps.reshape(-1).expand(rows) if timesteps.numel() == 1 else timesteps.reshape(-1)
        t_emb = get_timestep_embedding(t, self.config.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = self.time_embed(t_emb.to(x.dtype))
        if self.config.camera_dim is not None:
            if camera is None:
                raise ValueError("this multi-view UNet needs `camera` [rows, camera_dim] (one flattened pose per view)")
            emb = emb + self.camera_embed(camera.to(x.dtype))
        if self.config.ip_dim > 0:
            if ip is None or ip_img is None:
                raise ValueError("ImageDream's UNet needs `ip` (image features per row) and `ip_img` (reference latents)")
            x = self._with_reference(x, ip_img, layout)
            context = torch.cat([context, self.image_embed(ip.to(x.dtype))], dim=1)
        context = context.to(x.dtype)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, context, layout)
            skips.append(h)
        h = self.middle_block(h, emb, context, layout)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, layout)
        out = self.out(h)
        return MultiViewUNetOutput(sample=out) if return_dict else (out,)

    @staticmethod
    def _with_reference(x: torch.Tensor, ip_img: torch.Tensor, layout: ViewLayout) -> torch.Tensor:
        """x with every set's last view replaced by the reference latent (ImageDream's pixel controller). ip_img is
        one latent per set, or one per row (then the last view's rows are taken, which keeps row-wise splits of a
        batch consistent)."""
        rows = x.shape[0]
        last = layout.last_frame(rows).to(x.device)
        if ip_img.shape[0] == rows:
            ip_img = ip_img.index_select(0, last)
        elif ip_img.shape[0] != layout.sets(rows):
            raise ValueError(f"ip_img has {ip_img.shape[0]} latents for {layout.sets(rows)} sets of {rows} rows")
        return x.index_copy(0, last, ip_img.to(x.dtype))
