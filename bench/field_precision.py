"""The NeRF field's training step (forward with analytic normals + backward) under matrix-product precisions.

    python bench/field_precision.py [--rays 8192] [--samples 256] [--iters 10] [--out FILE]

The field is ImplicitVolume with threestudio-hash3d/configs/stable-zero123.yaml's geometry (its default hash-grid
backend: the fused Triton kernels on a CUDA GPU), the table drawn N(0, 0.1) so that the MLPs see varied features.
Two point sets of rays × samples points: "coherent", samples along straight rays through the box as a render
makes them (neighbouring points share hash-grid cells, so the backward's atomic adds collide), and "uniform".

Rows: float32 (as shipped); `geometry.mlp_precision` bfloat16 and float16 (the MLPs' matrix products in half
precision under autocast; the hash grid stays float32); float32 with TF32 matrix products. Each row gives the median ms of
the forward + backward, of a density-only forward (no grad), and the largest difference from the float32 row of the
normals and of the hash-table gradient (relative to its largest entry). Then the hash grid's backward kernel alone.
Prints a markdown table; --out also writes it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hash3d.config.loader import load_config  # noqa: E402
from hash3d.scene import ImplicitVolume  # noqa: E402
from hash3d.scene.implicit_volume import contract_to_unit  # noqa: E402

CONFIG = REPO / "threestudio-hash3d" / "configs" / "stable-zero123.yaml"


def timed(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median wall ms of fn() (synchronised around each call on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def ray_points(rays: int, samples: int, radius: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[rays · samples, 3]: evenly spaced samples along rays from random points in the box toward its centre."""
    origins = (torch.rand(rays, 3, generator=generator) * 2 - 1) * radius
    directions = torch.nn.functional.normalize(torch.randn(rays, 3, generator=generator), dim=-1)
    directions = directions * -origins.sign()
    t = torch.linspace(0, radius, samples)[None, :, None]
    return (origins[:, None] + t * directions[:, None]).reshape(-1, 3).clamp(-radius, radius).to(device)


def precisions(device: torch.device) -> dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager]]]:
    """Row name -> (geometry.mlp_precision, context the step runs in)."""
    rows = {"float32": ("float32", contextlib.nullcontext),
            "mlp_precision bfloat16": ("bfloat16", contextlib.nullcontext),
            "mlp_precision float16": ("float16", contextlib.nullcontext)}  # fmt: skip
    if device.type == "cuda":
        rows["float32, TF32 matrix products"] = ("float32", tf32)
    return rows


@contextlib.contextmanager
def tf32():
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rays", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(0)
    geometry = load_config(CONFIG)[0].system.geometry
    fields = {p: ImplicitVolume(replace(geometry, mlp_precision=p), device=device) for p in ("float32", "bfloat16", "float16")}
    field = fields["float32"]
    with torch.no_grad():
        field.encoding.table.normal_(0.0, 0.1)
    for other in fields.values():
        other.load_state_dict(field.state_dict())
    generator = torch.Generator().manual_seed(0)
    n = args.rays * args.samples
    point_sets = {
        "coherent": ray_points(args.rays, args.samples, field.radius, generator, device),
        "uniform": ((torch.rand(n, 3, generator=generator) * 2 - 1) * field.radius).to(device),
    }
    w, u, v = (torch.randn(n, k, generator=generator).to(device) for k in (1, 3, 3))

    def step(field: ImplicitVolume, points: torch.Tensor, context) -> tuple[torch.Tensor, torch.Tensor]:
        field.zero_grad(set_to_none=True)
        with context():
            out = field(points, with_normal=True)
            loss = (out.density * w).sum() + (out.albedo * u).sum() + (out.normal * v).sum()
        loss.backward()
        return out.normal.detach(), field.encoding.table.grad

    def density(field: ImplicitVolume, points: torch.Tensor, context) -> torch.Tensor:
        with torch.no_grad(), context():
            return field.forward_density(points)

    reference = {name: tuple(t.clone() for t in step(field, p, contextlib.nullcontext)) for name, p in point_sets.items()}
    rows = []
    for precision, (mlp_precision, context) in precisions(device).items():
        f = fields[mlp_precision]
        for name, points in point_sets.items():
            normal, grad = step(f, points, context)
            ref_normal, ref_grad = reference[name]
            rows.append({
                "precision": precision, "points": name,
                "step_ms": timed(lambda: step(f, points, context), device, args.iters),
                "density_ms": timed(lambda: density(f, points, context), device, args.iters),
                "normal_max_diff": (normal - ref_normal).abs().max().item(),
                "table_grad_rel_diff": ((grad - ref_grad).abs().max() / ref_grad.abs().max()).item(),
            })  # fmt: skip
    backward_ms = {}
    table = field.encoding.table
    for name, points in point_sets.items():
        encoded = field.encoding.forward_with_jacobian(contract_to_unit(points, field.radius))
        grad_out = torch.randn_like(encoded)
        backward_ms[name] = timed(
            lambda: torch.autograd.grad(encoded, table, grad_out, retain_graph=True), device, args.iters
        )
        del encoded, grad_out

    device_label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### NeRF field step by precision: {n} points ({args.rays} rays × {args.samples} samples), {device_label}, "
          f"hash grid backend {field.config.pos_encoding_config.backend}: median of {args.iters} calls")
    print("| precision | points | ms fwd+bwd | ms density fwd | max normal diff | table grad diff / max |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['points']} | {r['step_ms']:.2f} | {r['density_ms']:.2f} | "
              f"{r['normal_max_diff']:.1e} | {r['table_grad_rel_diff']:.1e} |")
    print("\nhash grid backward alone (features + Jacobian rows): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in backward_ms.items()))
    if args.out is not None:
        args.out.write_text(json.dumps({"device": device_label, "command": sys.argv, "points": n, "rows": rows,
                                        "hash_grid_backward_ms": backward_ms}, indent=1))
    return rows


if __name__ == "__main__":
    main()
