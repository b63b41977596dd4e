"""Where a NeRF training render's time goes: marching, density-only pruning, main field pass, backward.

    python bench/nerf_render.py [--device cuda|cpu] [--backend torch|triton|both] [--batch 12] [--res 64] [--iters 20]

The field and renderer are threestudio-hash3d/configs/stable-zero123.yaml's (ImplicitVolume with the magic3d
density blob, nerf-volume-renderer with 512 samples per ray and a 32³ occupancy grid), freshly initialised and with
the grid updated as training does at step 0 (warm-up: every cell evaluated), so the occupied cells are the blob's.
One step renders `--batch` random cameras of the config's training distribution (elevation, azimuth, distance,
fovy) at `--res`² in training mode (stratified jitter, albedo shading as zero123 uses) through the renderer
component, then backpropagates sum(rgb·u) + sum(opacity·w) + sum(normal·v) with fixed random u, w, v.

Phases are marked from outside the library: the bench swaps in wrappers for the two functions `_render_packed`
calls at the phase boundaries (`march_rays`, and `_field_in_chunks` for the main field pass), each recording a
CUDA event (wall clock on CPU):
- setup: camera rays and jitter, up to march_rays;
- march: march_rays (ray–box, occupancy test, packing; includes its one host read);
- prune: the density-only pass, the alpha/transmittance test and the selection;
- field + composite: the main field pass with normals, weights, shading and accumulation;
- backward: the loss's backward.
Each is the median over `--iters` steps. Counts: candidate intervals march_rays examined, samples it returned,
samples kept after pruning (medians).

Marchers: "tight box" is the library's march_rays (only the steps crossing the box around the occupied cells);
"full box (before)" is the former algorithm, kept here for comparison only (every step of the scene box, the
occupancy test on each). The bench checks that both return the same samples.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nerf_field import device_name  # noqa: E402  (bench/ is the script's directory)

from hash3d.config import build_block  # noqa: E402
from hash3d.config.loader import load_config  # noqa: E402
from hash3d.data.batches import CameraBatch  # noqa: E402
from hash3d.data.cameras import rays  # noqa: E402
from hash3d.data.random_camera import RandomCameraSampler  # noqa: E402
from hash3d.render import volume  # noqa: E402
from hash3d.render.material import Shading  # noqa: E402
from hash3d.render.occupancy import OccupancyGrid  # noqa: E402
from hash3d.render.rays import ray_aabb  # noqa: E402
from hash3d.render.sampling import PackedSamples, march_rays  # noqa: E402
from hash3d.scene.hash_grid_triton import triton_available  # noqa: E402

CONFIG = REPO / "threestudio-hash3d" / "configs" / "stable-zero123.yaml"
PHASES = ("setup", "march", "prune", "field + composite", "backward")


@torch.no_grad()
def full_box_march(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    radius: float,
    step_size: float,
    near_plane: float = 0.0,
    jitter: torch.Tensor | None = None,
    occupancy: OccupancyGrid | None = None,
    chunk_elements: int = 2**22,
) -> PackedSamples:
    """The former march_rays (reference only): every step through the whole box, [rays, max steps] candidates."""
    n_rays, device = rays_o.shape[0], rays_o.device
    t_near, t_far, hit = ray_aabb(rays_o, rays_d, radius, near_plane)
    if jitter is None:
        jitter = torch.zeros(n_rays, device=device)
    t_first = t_near + jitter * step_size
    span = torch.where(hit, t_far - t_first, torch.zeros_like(t_far)).clamp(min=0)
    max_steps = int(math.ceil(span.max().item() / step_size)) + 1 if n_rays else 0
    rays_per_chunk = max(1, chunk_elements // max(max_steps, 1))
    k = torch.arange(max_steps, device=device, dtype=rays_o.dtype)
    out_r, out_s, out_e = [], [], []
    for lo in range(0, n_rays, rays_per_chunk):
        hi = min(lo + rays_per_chunk, n_rays)
        start = t_first[lo:hi, None] + k[None, :] * step_size
        far = t_far[lo:hi, None]
        valid = hit[lo:hi, None] & (start < far)
        end = torch.minimum(start + step_size, far)
        if occupancy is not None:
            mid = 0.5 * (start + end)
            points = rays_o[lo:hi, None, :] + rays_d[lo:hi, None, :] * mid[..., None]
            valid = valid & occupancy.query(points.reshape(-1, 3)).view_as(valid)
        r, s = valid.nonzero(as_tuple=True)
        out_r.append(r + lo)
        out_s.append(start[r, s])
        out_e.append(end[r, s])
    return PackedSamples(torch.cat(out_r), torch.cat(out_s), torch.cat(out_e), n_rays * max_steps)


class Clock:
    """Named time marks: CUDA events on the current stream (read after one synchronisation), wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def ms_since(self) -> dict[str, float]:
        """{name of a mark: ms from the previous mark to it}."""
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        return out


@contextmanager
def phase_marks(clock: Clock, marcher, counts: dict[str, int]):
    """Swap `marcher` (recording the march's start and end) and a marking `_field_in_chunks` into the renderer."""
    saved = volume.march_rays, volume._field_in_chunks

    def march(*args, **kwargs):
        clock.mark("setup")
        samples = marcher(*args, **kwargs)
        clock.mark("march")
        counts["candidates"], counts["marched"] = samples.n_candidates, len(samples)
        return samples

    def field_pass(field, points, *args, **kwargs):
        clock.mark("prune")
        counts["kept"] = points.shape[0]
        return saved[1](field, points, *args, **kwargs)

    volume.march_rays, volume._field_in_chunks = march, field_pass
    try:
        yield
    finally:
        volume.march_rays, volume._field_in_chunks = saved


def build(backend: str, device: torch.device):
    """The config's geometry (hash grid on `backend`) and renderer, the grid updated as at training step 0."""
    cfg = load_config(CONFIG)[0]
    geometry = cfg.system.geometry
    geometry = replace(geometry, pos_encoding_config=replace(geometry.pos_encoding_config, backend=backend))
    system = replace(cfg.system, geometry=geometry)
    torch.manual_seed(0)
    field = build_block(system, "geometry", device=device)
    renderer = build_block(system, "renderer", device=device)
    renderer.train()
    assert renderer.refresh_occupancy(0, field, torch.Generator(device=device).manual_seed(0))
    return cfg, field, renderer


def training_cameras(cfg, args, device: torch.device) -> CameraBatch:
    cameras = replace(cfg.data.random_camera, height=args.res, width=args.res, batch_size=args.batch, resolution_milestones=[])
    return RandomCameraSampler(cameras, seed=0).sample(0).to(device)


def run(field, renderer, cams: CameraBatch, marcher, args, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    n_rays = args.batch * args.res * args.res
    g = torch.Generator(device=device).manual_seed(1)
    u, w, v = (torch.randn(n_rays, k, device=device, generator=g) for k in (3, 1, 3))
    background = torch.ones(3, device=device)
    shading = Shading("albedo")

    def step(i: int, clock: Clock, counts: dict[str, int]):
        for p in field.parameters():
            p.grad = None
        clock.mark("start")
        with phase_marks(clock, marcher, counts):
            out = renderer(
                field, cams.c2w, cams.fovy, cams.height, cams.width, background=background, shading=shading,
                training=True, generator=torch.Generator(device=device).manual_seed(i),
            )
        clock.mark("field + composite")
        loss = (out.rgb.reshape(-1, 3) * u).sum() + (out.opacity.reshape(-1, 1) * w).sum()
        loss = loss + (out.normal.reshape(-1, 3) * v).sum()
        loss.backward()
        clock.mark("backward")
        return out

    for i in range(args.warmup):
        step(i, Clock(device), {})
    times: dict[str, list[float]] = {name: [] for name in PHASES}
    counts_all: dict[str, list[int]] = {"candidates": [], "marched": [], "kept": []}
    for i in range(args.iters):
        clock, counts = Clock(device), {}
        step(args.warmup + i, clock, counts)
        for name, ms in clock.ms_since().items():
            times[name].append(ms)
        for name in counts_all:
            counts_all[name].append(counts[name])
    median = {name: statistics.median(values) for name, values in times.items()}
    median["total"] = statistics.median([sum(t) for t in zip(*times.values())])
    return median, {name: statistics.median(values) for name, values in counts_all.items()}


def same_samples(field, renderer, cams: CameraBatch, device: torch.device) -> bool:
    """Do the two marchers return identical samples on these cameras' rays?"""
    o, d = (x.reshape(-1, 3) for x in rays(cams.c2w, cams.fovy, cams.height, cams.width))
    jitter = torch.rand(o.shape[0], device=device, generator=torch.Generator(device=device).manual_seed(0))
    config, radius = renderer.config, field.radius
    call = lambda fn: fn(o, d, radius, config.step_size(radius), config.near_plane, jitter, renderer.grid, config.march_chunk_elements)  # noqa: E731
    a, b = call(march_rays), call(full_box_march)
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("ray_indices", "t_starts", "t_ends"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", choices=("torch", "triton", "both"), default="both")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 3 on CUDA, 1 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 1

    backends = ["torch", "triton"] if args.backend == "both" else [args.backend]
    if "triton" in backends and not triton_available(device):
        print(f"(triton hash grid not available on {device}: skipped)\n")
        backends.remove("triton")
    marchers = {"tight box (now)": march_rays, "full box (before)": full_box_march}
    rows = []
    for backend in backends:
        cfg, field, renderer = build(backend, device)
        cams = training_cameras(cfg, args, device)
        for name, marcher in marchers.items():
            rows.append((backend, name, *run(field, renderer, cams, marcher, args, device)))
    identical = same_samples(field, renderer, cams, device)

    print(
        f"### NeRF training render (stable-zero123 geometry and renderer, grid at step 0), {args.batch} cameras at "
        f"{args.res}×{args.res}, {device_name(device)}: median of {args.iters} steps, ms"
    )
    print("| hash grid | marcher | " + " | ".join(PHASES) + " | total | candidates | marched | kept |")
    print("|---|---|" + "---|" * (len(PHASES) + 4))
    for backend, name, median, counts in rows:
        phases = " | ".join(f"{median[p]:.2f}" for p in PHASES)
        print(
            f"| {backend} | {name} | {phases} | {median['total']:.2f} | {counts['candidates']:,.0f} | "
            f"{counts['marched']:,.0f} | {counts['kept']:,.0f} |"
        )
    lo, hi, _ = renderer.grid.occupied_box()
    box = " × ".join(f"[{a:.3g}, {b:.3g}]" for a, b in zip(lo.tolist(), hi.tolist()))
    print(f"\noccupied cells after the step-0 update: {renderer.grid.occupied_fraction():.1%}; their box: {box}")
    print(f"tight-box and full-box marches return identical samples: {identical}")


if __name__ == "__main__":
    main()
