"""Timing of the NeRF field with analytic normals: explicit density gradient vs the former double backward.

    python bench/nerf_field.py [--device cuda|cpu] [--points N] [--iters 20] [--compile]

The field is ImplicitVolume with threestudio-hash3d/configs/stable-zero123.yaml's geometry (16-level hash grid,
2**19 entries a level, 64-wide ReLU MLPs, softplus density, magic3d blob, analytic normals). N points uniform in the
scene box (default 2**18 on CUDA, 2**16 on CPU). One step: the field's forward with normals, then the backward of
sum(σ·w) + sum(albedo·u) + sum(normal·v) with fixed random w, u, v, as a NeRF step's losses use all three.

Paths:
- explicit: `ImplicitVolume.forward(points, with_normal=True)`, ∂σ/∂x built in the forward (one gather, forward-mode
  MLP); its backward is first order.
- double backward: the former implementation, kept here only: ∂σ/∂x by `torch.autograd.grad(create_graph=True)`
  inside the forward, so the loss's backward differentiates the encoding's and MLPs' backward again.
- explicit + torch.compile (with --compile): the explicit forward compiled (inductor); the double-backward path
  cannot be traced into one graph.
- explicit, triton hash grid (CUDA with triton installed only): the explicit path with
  `pos_encoding_config.backend = "triton"` (fused Triton encoding + Jacobian kernels, table gradient by atomics),
  on a copy of the field with the same parameters.

Prints a markdown table (median ms of the forward, of forward + backward, speed-up over double backward) with the
device name, and the largest differences of the normals and of the hash-table gradient between the paths.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.config.loader import load_config  # noqa: E402
from hash3d.scene import FieldOutput, ImplicitVolume  # noqa: E402
from hash3d.scene.hash_grid_triton import triton_available  # noqa: E402
from hash3d.scene.implicit_volume import contract_to_unit, density_activation, density_blob  # noqa: E402

CONFIG = REPO / "threestudio-hash3d" / "configs" / "stable-zero123.yaml"


def double_backward_forward(field: ImplicitVolume, points: torch.Tensor) -> FieldOutput:
    """The former analytic-normal forward (reference only): autograd.grad of the density with create_graph."""
    cfg = field.config
    with torch.enable_grad():
        x = points if points.requires_grad else points.detach().requires_grad_(True)
        enc = field.encoding(contract_to_unit(x, field.radius))
        raw = field.density_network(enc) + density_blob(x, cfg.density_bias, cfg.density_blob_scale, cfg.density_blob_std)
        density = density_activation(raw, cfg.density_activation)
        features = field.feature_network(enc)
        (grad,) = torch.autograd.grad(density, x, torch.ones_like(density), create_graph=True)
    return FieldOutput(density, field.albedo_from_features(features), -F.normalize(grad, dim=-1), features)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} torch threads"


def timed(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Median wall ms of fn() (synchronised around each call on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=None, help="default 2**18 on CUDA, 2**16 on CPU")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the explicit path under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    n = args.points or (2**18 if device.type == "cuda" else 2**16)

    torch.manual_seed(0)
    geometry = load_config(CONFIG)[0].system.geometry
    assert geometry.normal_type == "analytic"
    # the torch rows use the pure-torch encoding whatever the config's default backend
    geometry = replace(geometry, pos_encoding_config=replace(geometry.pos_encoding_config, backend="torch"))
    field = ImplicitVolume(geometry, device=device)
    with torch.no_grad():  # a trained-looking table (init is ±1e-4): the MLPs see varied features
        field.encoding.table.normal_(0.0, 0.1)
    radius = field.radius
    points = (torch.rand(n, 3, device=device) * 2 - 1) * radius
    w, u, v = (torch.randn(n, k, device=device) for k in (1, 3, 3))
    params = list(field.parameters())
    fused = None
    if device.type == "cuda" and triton_available(device):
        encoding = replace(geometry.pos_encoding_config, backend="triton")
        fused = ImplicitVolume(replace(geometry, pos_encoding_config=encoding), device=device)
        fused.load_state_dict(field.state_dict())
        params += list(fused.parameters())

    def loss_of(out: FieldOutput) -> torch.Tensor:
        return (out.density * w).sum() + (out.albedo * u).sum() + (out.normal * v).sum()

    explicit = lambda p: field(p, with_normal=True)  # noqa: E731
    reference = lambda p: double_backward_forward(field, p)  # noqa: E731
    paths = {"double backward (before)": reference, "explicit ∂σ/∂x (now)": explicit}
    if args.compile:
        paths["explicit ∂σ/∂x + torch.compile"] = torch.compile(explicit)
    if fused is not None:
        paths["explicit ∂σ/∂x, triton hash grid"] = lambda p: fused(p, with_normal=True)

    def step(forward) -> None:
        for p in params:
            p.grad = None
        loss_of(forward(points)).backward()

    # agreement of the two eager paths on this input
    outs, grads = {}, {}
    for name in ("double backward (before)", "explicit ∂σ/∂x (now)"):
        for p in params:
            p.grad = None
        out = paths[name](points)
        loss_of(out).backward()
        outs[name], grads[name] = out.normal.detach(), field.encoding.table.grad.clone()
    normal_diff = (outs["double backward (before)"] - outs["explicit ∂σ/∂x (now)"]).abs().max().item()
    g_ref, g_new = grads["double backward (before)"], grads["explicit ∂σ/∂x (now)"]
    table_diff = ((g_ref - g_new).abs().max() / g_ref.abs().max()).item()
    fused_note = ""
    if fused is not None:  # the triton path against the torch explicit path
        for p in params:
            p.grad = None
        out = paths["explicit ∂σ/∂x, triton hash grid"](points)
        loss_of(out).backward()
        fused_normal = (out.normal.detach() - outs["explicit ∂σ/∂x (now)"]).abs().max().item()
        fused_table = ((fused.encoding.table.grad - g_new).abs().max() / g_new.abs().max()).item()
        fused_note = (
            f"\ntriton hash grid vs explicit (torch): max |normal difference| {fused_normal:.2e}; "
            f"hash-table gradient: max |difference| / max |gradient| {fused_table:.2e}"
        )
        # both float32 paths against the torch path in float64: which one is off, and by how much
        exact = ImplicitVolume(geometry, device=device).double()
        exact.load_state_dict({k: v.double() for k, v in field.state_dict().items()})
        for p in exact.parameters():
            p.grad = None
        out64 = exact(points.double(), with_normal=True)
        ((out64.density * w.double()).sum() + (out64.albedo * u.double()).sum() + (out64.normal * v.double()).sum()).backward()
        g64, n64 = exact.encoding.table.grad, out64.normal.detach()
        for label, normal, grad in (
            ("torch float32", outs["explicit ∂σ/∂x (now)"], g_new),
            ("triton float32", out.normal.detach(), fused.encoding.table.grad),
        ):
            err_n = (normal.double() - n64).abs()
            fused_note += (
                f"\n{label} vs float64: normal max |difference| {err_n.max().item():.2e} "
                f"(99.9th percentile {err_n.max(-1).values.quantile(0.999).item():.2e}); hash-table gradient "
                f"max |difference| / max |gradient| {((grad.double() - g64).abs().max() / g64.abs().max()).item():.2e}"
            )
        del exact, out64

    rows = []
    for name, forward in paths.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms_fwd = timed(lambda: forward(points), device, args.iters, args.warmup)
        ms_step = timed(lambda: step(forward), device, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append((name, ms_fwd, ms_step, peak))

    base_fwd, base_step = rows[0][1], rows[0][2]
    print(f"### NeRF field (stable-zero123 geometry), {n} points, {device_name(device)}: median of {args.iters} calls")
    mem = " peak MiB |" if device.type == "cuda" else ""
    print(f"| path | ms fwd | ms fwd+bwd | speed-up fwd | speed-up fwd+bwd |{mem}")
    print("|---|---|---|---|---|" + ("---|" if mem else ""))
    for name, ms_fwd, ms_step, peak in rows:
        extra = f" {peak:.0f} |" if peak is not None else ""
        print(f"| {name} | {ms_fwd:.1f} | {ms_step:.1f} | {base_fwd / ms_fwd:.2f}× | {base_step / ms_step:.2f}× |{extra}")
    print(f"\nmax |normal difference| {normal_diff:.2e}; hash-table gradient: max |difference| / max |gradient| {table_diff:.2e}")
    if fused_note:
        print(fused_note)


if __name__ == "__main__":
    main()
