"""Mesh rasteriser: the torch backend against nvdiffrast on a CUDA machine (what differs, and how fast each is).

    PYTHONPATH=src python bench/mesh_raster_check.py [--out mesh_raster_check.png] [--size 512] [--repeats 20]

Renders the scene of tests/test_mesh_raster.py::test_nvdiffrast_matches_torch_backend (`check_scene`
below: a 1280-face icosphere, two orbit cameras, random uv and 64×64 texture, white
background) with both backends at the test's 128×96 and at --size × --size, and prints for each:

- visibility (same face, alpha mismatch), mean / max |rgb| and |alpha| differences, on all pixels and on pixels
  where both backends pick the same face; |depth| and |barycentric| differences there (with rotated corner order);
- probes: the differences after flipping the nvdiffrast image vertically / horizontally and after resampling it
  half a pixel or a pixel up / down / left / right, and the probe that fits best ("identity" = conventions agree);
- the pixels that differ most; texture-gradient and vertex-gradient agreement (the latter over all pixels and over
  the pixels whose faces agree: only the second should be small, see the test's docstring);
- timings at --size: median over --repeats calls of the textured render, forward only and forward + backward
  (torch.cuda.synchronize around each call; two warm-up calls first, the first one builds nvdiffrast's plugin).

Writes the --size renders side by side (rows: cameras; columns: torch, nvdiffrast, 4·|difference|) to --out.
Exit status 0 when the backends agree as the test requires, 1 when not, 2 without CUDA or nvdiffrast.

The comparison functions below are also what `tests/test_mesh_raster.py` prints when the backends disagree
(nothing in them needs CUDA or nvdiffrast). `compare_renders(ref, other)` returns plain floats:

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

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import math  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

BACKENDS = ("torch", "nvdiffrast")


# ----------------------------------------------------------------------------- comparison (tests use these too)


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
    from hash3d.render.mesh_raster import rasterize_mesh  # noqa: PLC0415

    v = scene["vertices"].detach().clone().requires_grad_(True)
    image, _, _ = rasterize_mesh(
        v, scene["faces"], scene["viewmats"], scene["Ks"], width, height, colors=scene["colors"], backend=backend
    )
    loss = image * image if weight is None else image * image * weight[..., None].to(image.dtype)
    (grad,) = torch.autograd.grad(loss.sum(), v)
    return grad


# ----------------------------------------------------------------------------- report on a GPU machine



def _render(scene: dict, width: int, height: int, backend: str, texture: torch.Tensor):
    from hash3d.render.mesh_raster import rasterize_mesh  # noqa: PLC0415

    return rasterize_mesh(
        scene["vertices"], scene["faces"], scene["viewmats"], scene["Ks"], width, height,
        uv=scene["uv"], texture=texture, background=1.0, backend=backend,
    )


def compare_at(width: int, height: int) -> tuple[dict, dict, bool]:
    """Render both backends at one size, print the comparison; returns (outputs per backend, metrics, agrees)."""
    scene = check_scene(height, width, "cuda")
    texture = scene["texture"].clone().requires_grad_(True)
    out, tex_grads = {}, {}
    for backend in BACKENDS:
        image, alpha, meta = _render(scene, width, height, backend, texture)
        (tex_grads[backend],) = torch.autograd.grad(image.sum(), texture)
        out[backend] = render_outputs(image, alpha, meta)
        out[backend]["backend"] = meta.backend
    t, n = out["torch"], out["nvdiffrast"]
    m = compare_renders(t, n)
    print(f"\n=== {width}x{height} (backends that ran: {t['backend']}, {n['backend']}) ===")
    print(format_comparison(m))
    print(worst_pixels(t, n))
    tg, ng = tex_grads["torch"], tex_grads["nvdiffrast"]
    tex_rel = ((tg - ng).abs().sum() / tg.abs().sum()).item()
    same = t["face_id"] == n["face_id"]
    g_same = {b: position_gradient(scene, width, height, b, weight=same) for b in BACKENDS}
    g_all = {b: position_gradient(scene, width, height, b) for b in BACKENDS}
    rel_same = ((g_same["torch"] - g_same["nvdiffrast"]).norm() / g_same["torch"].norm()).item()
    rel_all = ((g_all["torch"] - g_all["nvdiffrast"]).norm() / g_all["torch"].norm()).item()
    print(f"  texture gradient: relative L1 difference {tex_rel:.4g} (test: < 0.02)")
    print(
        f"  vertex gradient (vertex colours, loss sum(image²)): relative norm difference {rel_same:.4g} over the "
        f"pixels whose faces agree (test: < 0.01), {rel_all:.4g} over all pixels (not compared: the few pixels that "
        f"change face dominate it, 0.1 to 0.9 in CPU emulations)"
    )
    m.update(tex_rel=tex_rel, vertex_rel_same_face=rel_same, vertex_rel_all=rel_all)
    agrees = (
        m["best_probe"] == "identity"
        and m["face_same"] > 0.99
        and m["alpha_mismatch"] < 0.005
        and m.get("rgb_max_same_face", 1.0) < 1e-2
        and m.get("depth_max_same_face", 1.0) < 1e-3
        and tex_rel < 0.02
        and (rel_same < 0.01 or max(width, height) < 512)  # the test compares vertex gradients at 512²
    )
    print(f"  agree as the test requires: {'yes' if agrees else 'NO'}")
    return out, m, agrees


def time_backends(size: int, repeats: int) -> None:

    scene = check_scene(size, size, "cuda")
    texture = scene["texture"].clone().requires_grad_(True)
    print(f"\n=== timing at {size}x{size}, {scene['viewmats'].shape[0]} cameras, {scene['faces'].shape[0]} faces: "
          f"median of {repeats} calls ===")
    for backend in BACKENDS:
        for label, backward in (("forward", False), ("forward + backward", True)):
            def call():
                image, _, _ = _render(scene, size, size, backend, texture)
                if backward:
                    torch.autograd.grad(image.sum(), texture)

            for _ in range(2):
                call()
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                call()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            print(f"  {backend:>10} {label:<18}: {1000 * statistics.median(times):8.3f} ms "
                  f"(min {1000 * min(times):.3f}, max {1000 * max(times):.3f})")


def save_side_by_side(out: dict, path: Path) -> None:
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    t, n = out["torch"]["image"].float().cpu(), out["nvdiffrast"]["image"].float().cpu()
    diff = (4 * (t - n).abs()).clamp(0, 1)
    sep = torch.zeros(t.shape[1], 4, 3)
    rows = []
    for c in range(t.shape[0]):
        rows.append(torch.cat([t[c].clamp(0, 1), sep, n[c].clamp(0, 1), sep, diff[c]], 1))
        rows.append(torch.zeros(4, rows[-1].shape[1], 3))
    grid = torch.cat(rows[:-1], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.numpy() * 255 + 0.5).astype(np.uint8)).save(path)
    print(f"\nwrote {path} (rows: cameras; columns: torch | nvdiffrast | 4·|difference|)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("mesh_raster_check.png"), help="side-by-side PNG")
    parser.add_argument("--size", type=int, default=512, help="square size of the timed renders and the PNG")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per backend")
    args = parser.parse_args(argv)

    from hash3d.render.mesh_raster import has_nvdiffrast  # noqa: PLC0415

    if not torch.cuda.is_available():
        print("mesh_raster_check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine.",
              file=sys.stderr)
        return 2
    if not has_nvdiffrast():
        print("mesh_raster_check: nvdiffrast is not installed (pip install diffrp-nvdiffrast).", file=sys.stderr)
        return 2
    import nvdiffrast  # noqa: PLC0415

    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"nvdiffrast {getattr(nvdiffrast, '__version__', '?')}")
    _, _, ok_test = compare_at(128, 96)
    big, _, ok_big = compare_at(args.size, args.size)
    save_side_by_side(big, args.out)
    time_backends(args.size, args.repeats)
    return 0 if ok_test and ok_big else 1


if __name__ == "__main__":
    sys.exit(main())
