"""GPU timing of the Gaussian rasteriser's two backends (gsplat vs pure torch) on DreamGaussian-sized scenes.

    python bench/gaussian_raster.py [--gaussians 5000 20000] [--sizes 128 256 512] [--iters 20]

A ball of random Gaussians (DreamGaussian's stage 1 starts from 5,000 and ends near 20,000), one camera at DreamGaussian's
radius 2 and fovy 49.1°, white background. Prints median ms of a forward pass and of forward + backward for each backend,
and the largest pixel difference between them. gsplat compiles its CUDA kernels on first use (about 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv  # noqa: E402
from hash3d.render.gaussian_raster import has_gsplat, rasterize_gaussians  # noqa: E402


def scene(n: int, generator: torch.Generator, device: str = "cuda") -> dict[str, torch.Tensor]:
    direction = torch.randn(n, 3, generator=generator)
    radius = 0.5 * torch.rand(n, 1, generator=generator) ** (1 / 3)
    params = {
        "means": direction / direction.norm(dim=-1, keepdim=True) * radius,
        "quats": torch.randn(n, 4, generator=generator),
        "scales": torch.full((n, 3), 0.02) * torch.rand(n, 3, generator=generator).add(0.5),
        "opacities": torch.rand(n, generator=generator).mul(0.8).add(0.1),
        "colors": torch.rand(n, 3, generator=generator),
    }
    return {k: v.to(device).requires_grad_(True) for k, v in params.items()}


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", nargs="+", type=int, default=[5000, 20000])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available() or not has_gsplat():
        raise SystemExit("bench/gaussian_raster.py needs a CUDA GPU and gsplat")
    c2w = orbit_c2w(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    viewmats = world_to_camera_opencv(c2w).cuda()
    white = torch.ones(3, device="cuda")
    print(f"### Gaussian rasteriser, {torch.cuda.get_device_name()}: median ms of {args.iters} calls, one camera")
    print("| Gaussians | size | gsplat fwd | gsplat fwd+bwd | torch fwd | torch fwd+bwd | fwd+bwd torch/gsplat | max |diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.gaussians:
        p = scene(n, torch.Generator().manual_seed(n))
        for size in args.sizes:
            Ks = intrinsics(torch.tensor([49.1]), size, size).cuda()

            def render(backend: str) -> torch.Tensor:
                return rasterize_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                                           viewmats, Ks, size, size, white, backend)[0]  # fmt: skip

            def forward(backend: str) -> None:
                with torch.no_grad():
                    render(backend)

            def forward_backward(backend: str) -> None:
                render(backend).sum().backward()

            row = {b: (timed(lambda: forward(b), args.iters), timed(lambda: forward_backward(b), args.iters)) for b in ("gsplat", "torch")}
            with torch.no_grad():
                diff = (render("gsplat") - render("torch")).abs().max().item()
            (gf, gb), (tf, tb) = row["gsplat"], row["torch"]
            print(f"| {n} | {size} | {gf:.2f} | {gb:.2f} | {tf:.2f} | {tb:.2f} | {tb / gb:.1f}x | {diff:.2g} |", flush=True)


if __name__ == "__main__":
    main()
