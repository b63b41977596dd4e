"""Mesh rasteriser: the torch backend against nvdiffrast on a CUDA machine (what differs, and how fast each is).

    PYTHONPATH=src python bench/mesh_raster_check.py [--out mesh_raster_check.png] [--size 512] [--repeats 20]

Renders the scene of tests/test_mesh_raster.py::test_nvdiffrast_matches_torch_backend (`hash3d.render.
mesh_raster_check.check_scene`: a 1280-face icosphere, two orbit cameras, random uv and 64×64 texture, white
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

import torch  # noqa: E402

BACKENDS = ("torch", "nvdiffrast")


def _render(scene: dict, width: int, height: int, backend: str, texture: torch.Tensor):
    from hash3d.render.mesh_raster import rasterize_mesh  # noqa: PLC0415

    return rasterize_mesh(
        scene["vertices"], scene["faces"], scene["viewmats"], scene["Ks"], width, height,
        uv=scene["uv"], texture=texture, background=1.0, backend=backend,
    )


def compare_at(width: int, height: int) -> tuple[dict, dict, bool]:
    """Render both backends at one size, print the comparison; returns (outputs per backend, metrics, agrees)."""
    from hash3d.render.mesh_raster_check import (  # noqa: PLC0415
        check_scene,
        compare_renders,
        format_comparison,
        position_gradient,
        render_outputs,
        worst_pixels,
    )

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
    from hash3d.render.mesh_raster_check import check_scene  # noqa: PLC0415

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
