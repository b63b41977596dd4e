"""Cameras in threestudio's convention, used by every renderer and front-end.

World frame: z up. A camera at (elevation e, azimuth a, distance d) sits at d·(cos e·cos a, cos e·sin a, sin e)
and looks at the origin; elevation +90° looks straight down. Camera-to-world matrices are OpenGL style: columns
[right, up, back] (the camera looks down its −z axis). `opengl_to_opencv` converts for rasterisers that use the
OpenCV convention (x right, y down, looking down +z), such as gsplat.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F


def camera_position(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """[B] each -> camera centres [B, 3]."""
    e, a = torch.deg2rad(elevation_deg.float()), torch.deg2rad(azimuth_deg.float())
    d = distance.float()
    return torch.stack([d * torch.cos(e) * torch.cos(a), d * torch.cos(e) * torch.sin(a), d * torch.sin(e)], -1)


def look_at(position: torch.Tensor, center: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """Camera centres [B, 3] -> camera-to-world [B, 4, 4] (OpenGL) looking at `center` (default origin), z up."""
    if center is None:
        center = torch.zeros_like(position)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], device=position.device).expand_as(position)
    forward = F.normalize(center - position, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    # looking straight up or down: any horizontal right vector will do
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([0.0, 1.0, 0.0], device=position.device).expand_as(right), right)
    right = F.normalize(right, dim=-1)
    true_up = F.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, device=position.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, -forward, position
    c2w[:, 3, 3] = 1
    return c2w


def orbit_c2w(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Cameras on a sphere looking at the origin -> camera-to-world [B, 4, 4]."""
    return look_at(camera_position(elevation_deg, azimuth_deg, distance))


def focal_from_fovy(fovy_deg: torch.Tensor | float, height: int) -> torch.Tensor:
    """Focal length in pixels for a vertical field of view."""
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float32)
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy))


def intrinsics(fovy_deg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B] vertical fields of view -> pinhole intrinsics K [B, 3, 3] (pixel centres at +0.5)."""
    f = focal_from_fovy(fovy_deg, height).reshape(-1)
    K = torch.zeros(f.shape[0], 3, 3, device=f.device)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2, height / 2, 1
    return K


def ray_directions(height: int, width: int, fovy_deg: torch.Tensor, device=None) -> torch.Tensor:
    """Camera-space unit ray directions [B, H, W, 3] (OpenGL: x right, y up, looking down −z)."""
    f = focal_from_fovy(fovy_deg, height).reshape(-1, 1, 1).to(device)
    j, i = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    x = (i - width / 2) / f
    y = -(j - height / 2) / f
    return F.normalize(torch.stack([x, y, -torch.ones_like(x)], -1), dim=-1)


def rays(c2w: torch.Tensor, fovy_deg: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-to-world [B, 4, 4] -> ray origins and unit directions, each [B, H, W, 3], in world space."""
    dirs = ray_directions(height, width, fovy_deg, c2w.device)
    world = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs)
    origins = c2w[:, None, None, :3, 3].expand_as(world)
    return origins, world


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Flip the camera's y and z axes: an OpenGL camera-to-world becomes an OpenCV one."""
    # c2w @ diag(1, -1, -1, 1) as a column scaling: exact, and no matmul for autocast to turn into fp16
    return c2w * torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device, dtype=c2w.dtype)


def world_to_camera_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world [B, 4, 4] -> OpenCV world-to-camera (view matrices for gsplat-style rasterisers)."""
    return torch.linalg.inv(opengl_to_opencv(c2w))


def orbit_azimuths(n: int, start: float = 0.0, endpoint: bool = False) -> torch.Tensor:
    """n azimuths around the circle from `start` (degrees); endpoint=True repeats the first one at the end."""
    if endpoint:
        return torch.linspace(start, start + 360.0, n)
    return start + torch.arange(n, dtype=torch.float32) * 360.0 / n


def projection_matrix(fovy_deg: torch.Tensor, aspect: float, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """[B] vertical fields of view -> OpenGL perspective projections [B, 4, 4] (clip space z in [-1, 1])."""
    fovy = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32).reshape(-1))
    f = 1.0 / torch.tan(0.5 * fovy)
    proj = torch.zeros(fovy.shape[0], 4, 4, device=fovy.device)
    proj[:, 0, 0] = f / aspect
    proj[:, 1, 1] = f
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj
