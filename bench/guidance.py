"""GPU benchmark of one SDS guidance step, cache off vs on, on full-size random-weight models.

    python bench/guidance.py [--families sd zero123] [--batches 1 4 8] [--iters 30] [--out bench.json]

Models are written by `hash3d.testing.write_model` (real architectures, random weights, fp16) and loaded through
the same `from_pretrained` path as real weights; cost does not depend on weight values. A step here is the guidance
call on latents plus its backward (rgb_as_latents; the VAE encoder cost is reported separately). For each family
and batch it prints ms per step with the cache off, on at a miss and on at a hit in each mode, the table's
query + insert time, peak GPU memory, and the guidance-time ratio that hash probability η gives if every try hits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hash3d.cache.config import CacheConfig, CachePolicyConfig  # noqa: E402
from hash3d.diffusion.guidance import (  # noqa: E402
    StableDiffusionGuidance,
    StableDiffusionGuidanceConfig,
    Zero123Guidance,
    Zero123GuidanceConfig,
)
from hash3d.testing.models import write_model  # noqa: E402
from hash3d.triton_support import triton_available  # noqa: E402

TABLE_BACKENDS = ("torch", "triton")

ETAS = (0.1, 0.3, 0.5, 1.0)


def timed(fn, iters: int, warmup: int = 3) -> float:
    """Median ms of fn() over iters calls, timed with CUDA events."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(warmup + i)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn(0)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def build(family: str, path: str, graphs: bool):
    common = dict(pretrained_model_name_or_path=path, dtype="fp16", timestep_sampling="random_shared", cuda_graphs=graphs)
    if family == "sd":
        g = StableDiffusionGuidance(StableDiffusionGuidanceConfig(**common), "cuda")
        g.set_prompt("a DSLR photo of a corgi")
    else:
        g = Zero123Guidance(Zero123GuidanceConfig(**common), "cuda")
        g.set_image(torch.rand(4, 256, 256))
    return g


def cache_config(mode: str) -> CacheConfig:
    # t cell 1000: every timestep shares a cell, so a repeated camera is a hit whatever t is drawn
    return CacheConfig(enabled=True, mode=mode, cell_size=(10.0, 10.0, 0.1, 1000.0), policy=CachePolicyConfig(1.0))


def profile(fn, label: str, steps: int = 10) -> None:
    """Print where the host and the GPU spend a step's time (torch.profiler, after warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            fn(i)
        torch.cuda.synchronize()
    print(f"\n#### profile: {label} ({steps} steps; times are totals)")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=70))


def bench_family(
    family: str, path: str, batches: list[int], iters: int, graphs: bool, profiling: bool = False
) -> list[dict]:
    g = build(family, path, graphs)
    latent = int(g.unet.config.sample_size)
    rows = []
    for B in batches:
        latents = torch.randn(B, 4, latent, latent, device="cuda", requires_grad=True)
        fixed = (torch.full((B,), 15.0, device="cuda"), torch.linspace(0, 350, B, device="cuda"), torch.full((B,), 1.5, device="cuda"))

        def step(cams):
            out = g(latents, *cams, rgb_as_latents=True)
            out.loss.backward()
            return out

        def new_cams(i):  # a new elevation cell every call: always a miss
            return (torch.full((B,), 10.0 * (i % 1000) + 5.0 + 10000.0 * graphs, device="cuda"),) + fixed[1:]

        row = {"family": family, "batch": B, "graphs": graphs}
        g.set_cache(CacheConfig(enabled=False))
        row["off_ms"] = timed(lambda i: step(fixed), iters)
        row["off_peak_mb"] = peak_mb(lambda i: step(fixed))
        rgb = torch.rand(B, 3, g.image_size, g.image_size, device="cuda", requires_grad=True)
        row["vae_encode_fwd_bwd_ms"] = timed(lambda i: g.encode_images(rgb).sum().backward(), iters)
        if profiling:
            profile(lambda i: step(fixed), f"{family} batch {B} cache off, graphs {graphs}")
        for mode in ("features", "noise"):
            g.set_cache(cache_config(mode))
            row[f"{mode}_miss_ms"] = timed(lambda i: step(new_cams(i)), iters)
            g.cache.reset()
            step(fixed)  # prime
            out = step(fixed)
            assert bool(out.cache_hits.all()), "the benchmark's hit case did not hit"
            row[f"{mode}_hit_ms"] = timed(lambda i: step(fixed), iters)
            if profiling:
                profile(lambda i: step(fixed), f"{family} batch {B} {mode} hit, graphs {graphs}")
            row[f"{mode}_peak_mb"] = peak_mb(lambda i: step(fixed))
            row[f"{mode}_entry_mb"] = g.cache.table.storage.pool_values[0].numel() * 2 / 2**20
            if mode == "features":
                row["shallow_ms"] = shallow_blocks_ms(g, latents, fixed, iters)
                if graphs:  # the same hit through the eager reference path (GuidanceConfig.hit_graphs off)
                    g.config.hit_graphs = False
                    g.set_cache(cache_config(mode))
                    step(fixed)
                    assert bool(step(fixed).cache_hits.all())
                    row["features_hit_eager_ms"] = timed(lambda i: step(fixed), iters)
                    g.config.hit_graphs = True
                    g.set_cache(cache_config(mode))
                    step(fixed)
            keys = torch.stack([fixed[0], fixed[1], fixed[2], torch.full((B,), 500.0, device="cuda")], -1)
            values = g.cache.table.storage.pool_values[:B].view((B,) + g.cache.table.value_shape).clone()
            x = torch.randn(B, 4, latent, latent, device="cuda")
            for backend in TABLE_BACKENDS:
                if backend == "triton" and not triton_available("cuda"):
                    continue
                config = replace(cache_config(mode), table_backend=backend)
                table = config.build_table("cuda", check_finite=False, cuda_graphs=graphs)
                table.insert(keys, x, values)

                def query_insert(i):
                    table.query(keys, x)
                    table.insert(keys, x, values)

                row[f"{mode}_table_{backend}_ms"] = timed(query_insert, iters)
            table = values = None  # free the entries before the next mode
        g.set_cache(CacheConfig(enabled=False))
        rows.append(row)
        print(json.dumps(row), flush=True)
    del g
    torch.cuda.empty_cache()
    return rows


def shallow_blocks_ms(g, latents: torch.Tensor, cameras: tuple, iters: int) -> float:
    """GPU ms of the shallow blocks alone on stored deep features (what a features hit cannot avoid), replayed as a
    CUDA graph: the floor of a features-mode hit."""
    B = latents.shape[0]
    table = g.cache.table
    with torch.no_grad():
        t = torch.full((B,), 500, dtype=torch.long, device="cuda")
        x_t = g.diffuse(latents.detach(), t, torch.randn_like(latents))
        x_in, t_in, ctx = g.unet_batch(x_t, t, g.conditioning(*cameras))
        values = torch.zeros((B,) + tuple(table.value_shape), dtype=table.value_dtype, device="cuda")
        for _ in range(2):
            g.cache.cached_output(x_in, t_in, ctx, values)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            g.cache.cached_output(x_in, t_in, ctx, values)
    return timed(lambda i: graph.replay(), iters)


def print_tables(rows: list[dict], device: str) -> None:
    print(f"\n### Guidance step (ms, median), fp16, {device}")
    print("| model | batch | CUDA graphs | off | feat. miss | feat. hit | hit/miss | eager-path hit (hit_graphs off) | hit/miss | shallow blocks alone | its share of the miss | noise miss | noise hit | hit/miss | VAE enc fwd+bwd | peak MB off / feat. / noise |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {r['batch']} | {'on' if r['graphs'] else 'off'} | {r['off_ms']:.1f} | {r['features_miss_ms']:.1f} | {r['features_hit_ms']:.1f} | "
            f"{r['features_hit_ms'] / r['features_miss_ms']:.0%} | {r.get('features_hit_eager_ms', float('nan')):.1f} | "
            f"{r.get('features_hit_eager_ms', float('nan')) / r['features_miss_ms']:.0%} | {r.get('shallow_ms', float('nan')):.1f} | "
            f"{r.get('shallow_ms', float('nan')) / r['features_miss_ms']:.0%} | {r['noise_miss_ms']:.1f} | {r['noise_hit_ms']:.2f} | "
            f"{r['noise_hit_ms'] / r['noise_miss_ms']:.1%} | {r['vae_encode_fwd_bwd_ms']:.1f} | "
            f"{r['off_peak_mb']:.0f} / {r['features_peak_mb']:.0f} / {r['noise_peak_mb']:.0f} |"
        )
    print("\n### Table query + insert (ms, median) and its share of a miss step of the same mode")
    print("| model | batch | CUDA graphs | mode | " + " | ".join(f"{b} | share" for b in TABLE_BACKENDS) + " |")
    print("|---|---|---|---|" + "---|---|" * len(TABLE_BACKENDS))
    for r in rows:
        for mode in ("features", "noise"):
            cells = []
            for backend in TABLE_BACKENDS:
                ms = r.get(f"{mode}_table_{backend}_ms")
                cells += ["n/a", "n/a"] if ms is None else [f"{ms:.3f}", f"{ms / r[f'{mode}_miss_ms']:.1%}"]
            print(f"| {r['family']} | {r['batch']} | {'on' if r['graphs'] else 'off'} | {mode} | " + " | ".join(cells) + " |")
    print("\n### Guidance-time speed-up vs cache off if every try hits: off / ((1-η)·miss + η·hit)")
    print("| model | batch | CUDA graphs | mode | " + " | ".join(f"η={e:g}" for e in ETAS) + " |")
    print("|---|---|---|---|" + "---|" * len(ETAS))
    for r in rows:
        for mode in ("features", "noise"):
            miss, hit = r[f"{mode}_miss_ms"], r[f"{mode}_hit_ms"]
            ratios = [r["off_ms"] / ((1 - e) * miss + e * hit) for e in ETAS]
            print(f"| {r['family']} | {r['batch']} | {'on' if r['graphs'] else 'off'} | {mode} | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["zero123", "sd"], choices=["zero123", "sd"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--graphs", choices=["off", "on", "both"], default="both", help="CUDA-graph replay of UNet passes")
    parser.add_argument("--models", default="/tmp/hash3d-bench-models", help="where the written models go")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of off and hit steps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/guidance.py needs a CUDA GPU")
    device = torch.cuda.get_device_name()
    rows = []
    for family in args.families:
        path = Path(args.models) / f"{family}-full"
        if not (path / "model_index.json").exists():
            write_model(family, "full", path, dtype=torch.float16, device="cuda")
        for graphs in {"off": [False], "on": [True], "both": [False, True]}[args.graphs]:
            rows += bench_family(family, str(path), args.batches, args.iters, graphs, args.profile)
    print_tables(rows, device)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
