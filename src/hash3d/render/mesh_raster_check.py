"""Compare two renders of one scene by the mesh rasteriser's backends, with numbers that say what is off.

Used by `tests/test_mesh_raster.py::test_nvdiffrast_matches_torch_backend` (its failure messages) and by
`bench/mesh_raster_check.py` (a report on a GPU machine). Nothing here needs CUDA or nvdiffrast.

`compare_renders(ref, other)` returns plain floats:

- visibility: fraction of pixels where the two pick the same triangle (``face_same``), where only one covers the
  pixel (``alpha_mismatch``);
- colour: mean / max |rgb difference| over all pixels, over pixels where both pick the same triangle, and the mean
  |alpha difference|;
- by-products where both pick the same triangle: |depth difference|, |barycentric difference| and the latter with
  the other's corners rotated by one or two places (a wrong corner order shows as a rotation that fits better);
- convention probes: mean |rgb| and |alpha| differences after flipping the other image vertically, horizontally or
  both, and after resampling it half a pixel or a whole pixel up / down / left / right. ``best_probe`` names the
  probe with the smallest rgb + alpha difference: "identity" when the conventions agree, "flip_v" for a row-order
  bug, "dy+0.5" for a half-pixel centre offset, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["check_scene", "compare_renders", "format_comparison", "position_gradient", "render_outputs", "worst_pixels"]


def check_scene(
    height: int, width: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict:
    """The scene of the backend comparison: an icosphere (radius 0.6, 1280 faces) seen by two orbit cameras,
    random vertex colours, random uv and a random 64×64 texture (seed 0, drawn on the CPU)."""
    import trimesh  # noqa: PLC0415 (only this scene needs it)

    from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv  # noqa: PLC0415

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    g = torch.Generator().manual_seed(0)
    vertices = torch.tensor(sphere.vertices, dtype=dtype)
    n = vertices.shape[0]
    scene = dict(
        vertices=vertices,
        faces=torch.tensor(sphere.faces, dtype=torch.long),
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
        uv=torch.rand(n, 2, generator=g, dtype=dtype),
        texture=torch.rand(64, 64, 3, generator=g, dtype=dtype),
    )
    c2w = orbit_c2w(torch.tensor([20.0, -10.0]), torch.tensor([15.0, 200.0]), torch.tensor([1.5, 1.7]))
    scene["viewmats"] = world_to_camera_opencv(c2w).to(dtype)
    scene["Ks"] = intrinsics(torch.tensor([50.0, 55.0]), height, width).to(dtype)
    return {k: v.to(device) for k, v in scene.items()}


def render_outputs(image: Tensor, alpha: Tensor, meta) -> dict:
    """`rasterize_mesh`'s (image, alpha, meta) as the dict `compare_renders` takes (detached)."""
    return dict(
        image=image.detach(),
        alpha=alpha.detach(),
        face_id=meta.face_id,
        depth=meta.depth.detach(),
        bary=meta.bary.detach(),
    )


def _shifted(x: Tensor, shift: float, dim: int) -> Tensor:
    """x resampled at index + shift along `dim` (linear between neighbours; wraps, so crop the border after)."""
    lo = math.floor(shift)
    t = shift - lo
    out = torch.roll(x, -lo, dim)
    if t:
        out = (1 - t) * out + t * torch.roll(x, -(lo + 1), dim)
    return out


def _probes() -> dict[str, Callable[[Tensor], Tensor]]:
    """name -> transform of an [C, H, W, D] image (1 = rows, 2 = columns)."""
    probes: dict[str, Callable[[Tensor], Tensor]] = {
        "identity": lambda x: x,
        "flip_v": lambda x: x.flip(1),
        "flip_h": lambda x: x.flip(2),
        "flip_vh": lambda x: x.flip(1).flip(2),
    }
    for s in (-1.0, -0.5, 0.5, 1.0):
        probes[f"dy{s:+g}"] = lambda x, s=s: _shifted(x, s, 1)
        probes[f"dx{s:+g}"] = lambda x, s=s: _shifted(x, s, 2)
    return probes


def compare_renders(ref: dict, other: dict, border: int = 2) -> dict[str, float | str]:
    """ref, other: dicts with image [C, H, W, D], alpha [C, H, W, 1] and, when known, face_id [C, H, W],
    depth [C, H, W, 1], bary [C, H, W, 3] (see `render_outputs`). Returns the metrics named in the module doc."""
    ti, oi = ref["image"].detach().double(), other["image"].detach().double()
    ta, oa = ref["alpha"].detach().double(), other["alpha"].detach().double()
    m: dict[str, float | str] = {}
    d = (ti - oi).abs()
    m["rgb_mean"], m["rgb_max"] = d.mean().item(), d.max().item()
    m["alpha_mean"] = (ta - oa).abs().mean().item()
    m["alpha_mismatch"] = ((ta > 0.5) != (oa > 0.5)).double().mean().item()
    m["coverage_ref"], m["coverage_other"] = (ta > 0.5).double().mean().item(), (oa > 0.5).double().mean().item()
    both = ((ta > 0.5) & (oa > 0.5))[..., 0]
    m["rgb_mean_both_covered"] = d[both].mean().item() if both.any() else float("nan")
    if "face_id" in ref and "face_id" in other:
        same = ref["face_id"] == other["face_id"]
        m["face_same"] = same.double().mean().item()
        hit = same & (ref["face_id"] >= 0)
        m["face_same_covered"] = (hit.sum() / both.sum().clamp_min(1)).item()
        if hit.any():
            m["rgb_mean_same_face"], m["rgb_max_same_face"] = d[hit].mean().item(), d[hit].max().item()
            if "depth" in ref and "depth" in other:
                dd = (ref["depth"].double() - other["depth"].double()).abs()[hit]
                m["depth_mean_same_face"], m["depth_max_same_face"] = dd.mean().item(), dd.max().item()
            if "bary" in ref and "bary" in other:
                tb, ob = ref["bary"].double()[hit], other["bary"].double()[hit]
                for k in range(3):
                    db = (tb - ob.roll(k, -1)).abs()
                    key = "bary" if k == 0 else f"bary_rot{k}"
                    m[f"{key}_mean_same_face"] = db.mean().item()
                    if k == 0:
                        m["bary_max_same_face"] = db.max().item()
    b = border
    crop = (slice(None), slice(b, -b or None), slice(b, -b or None))
    best, best_err = "identity", float("inf")
    for name, f in _probes().items():
        e_rgb = (ti - f(oi))[crop].abs().mean().item()
        e_alpha = (ta - f(oa))[crop].abs().mean().item()
        m[f"probe_{name}_rgb"], m[f"probe_{name}_alpha"] = e_rgb, e_alpha
        if e_rgb + e_alpha < best_err - 1e-12:
            best, best_err = name, e_rgb + e_alpha
    m["best_probe"] = best
    return m


def format_comparison(m: dict, ref_name: str = "torch", other_name: str = "nvdiffrast") -> str:
    """The metrics of `compare_renders` as a few readable lines."""

    def g(key: str) -> str:
        v = m.get(key)
        return "n/a" if v is None else (v if isinstance(v, str) else f"{v:.4g}")

    lines = [
        f"{other_name} vs {ref_name}:",
        f"  visibility: same face {g('face_same')} (of covered {g('face_same_covered')}), alpha mismatch "
        f"{g('alpha_mismatch')}, coverage {g('coverage_ref')} / {g('coverage_other')}",
        f"  rgb |diff|: mean {g('rgb_mean')} max {g('rgb_max')}; both covered mean {g('rgb_mean_both_covered')}; "
        f"same face mean {g('rgb_mean_same_face')} max {g('rgb_max_same_face')}; alpha |diff| mean {g('alpha_mean')}",
        f"  same face: depth |diff| mean {g('depth_mean_same_face')} max {g('depth_max_same_face')}; bary |diff| "
        f"mean {g('bary_mean_same_face')} max {g('bary_max_same_face')} (corners rotated by 1: "
        f"{g('bary_rot1_mean_same_face')}, by 2: {g('bary_rot2_mean_same_face')})",
    ]
    probes = [k[len("probe_") : -len("_rgb")] for k in m if k.startswith("probe_") and k.endswith("_rgb")]
    cells = [f"{p} {g(f'probe_{p}_rgb')}/{g(f'probe_{p}_alpha')}" for p in probes]
    lines.append("  probes (other transformed, mean |diff| rgb/alpha): " + ", ".join(cells))
    lines.append(f"  best probe: {g('best_probe')} (identity = conventions agree)")
    return "\n".join(lines)


def worst_pixels(ref: dict, other: dict, k: int = 8) -> str:
    """The k pixels with the largest |rgb difference|: camera, row, column, both colours and face ids."""
    d = (ref["image"].detach().double() - other["image"].detach().double()).abs().amax(-1)  # [C, H, W]
    C, H, W = d.shape
    top = torch.topk(d.reshape(-1), min(k, d.numel()))
    rows = []
    for val, idx in zip(top.values.tolist(), top.indices.tolist()):
        c, rem = divmod(idx, H * W)
        i, j = divmod(rem, W)
        a = [round(x, 3) for x in ref["image"][c, i, j].tolist()]
        b = [round(x, 3) for x in other["image"][c, i, j].tolist()]
        fa = int(ref["face_id"][c, i, j]) if "face_id" in ref else "?"
        fb = int(other["face_id"][c, i, j]) if "face_id" in other else "?"
        rows.append(f"  cam {c} row {i} col {j}: |diff| {val:.3g}  {a} (face {fa}) vs {b} (face {fb})")
    return "largest differences:\n" + "\n".join(rows)


def position_gradient(scene: dict, width: int, height: int, backend: str, weight: Tensor | None = None) -> Tensor:
    """d/d(vertices) of sum(weight · image²) for the vertex-coloured scene (weight [C, H, W], default 1)."""
    from .mesh_raster import rasterize_mesh  # noqa: PLC0415

    v = scene["vertices"].detach().clone().requires_grad_(True)
    image, _, _ = rasterize_mesh(
        v, scene["faces"], scene["viewmats"], scene["Ks"], width, height, colors=scene["colors"], backend=backend
    )
    loss = image * image if weight is None else image * image * weight[..., None].to(image.dtype)
    (grad,) = torch.autograd.grad(loss.sum(), v)
    return grad
