"""Shading normals of a rendered depth map (threestudio-3dgs' Depth2Normal): pixel positions from z-depth, then the
normal of the surface they form, from central differences between neighbouring pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.cameras import ray_directions, rays


def z_depth_rays(c2w: torch.Tensor, fovy_deg: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and directions [B, H, W, 3] scaled so that origin + z·direction is the point at camera depth z
    (threestudio's `rays_d_normalize: false`)."""
    origins, unit = rays(c2w, fovy_deg, height, width)
    cam = ray_directions(height, width, fovy_deg, c2w.device)  # camera space, looking down -z
    return origins, unit / (-cam[..., 2:3])


def positions_from_depth(origins: torch.Tensor, directions: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """World points [B, H, W, 3] of a z-depth map [B, H, W, 1] along `z_depth_rays`."""
    return origins + depth * directions


def normals_from_positions(xyz: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] world points of neighbouring pixels -> unit normals [B, H, W, 3] facing the camera.

    Central differences along the image's columns (dx) and rows (dy); n = normalise(dy x dx), which for an image whose
    rows run down the screen points towards the viewer. Border pixels repeat their neighbours' differences."""
    p = F.pad(xyz.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    dx = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
    dy = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
    return F.normalize(torch.cross(dy, dx, dim=-1), dim=-1)
