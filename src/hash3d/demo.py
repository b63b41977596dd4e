"""Guidance demo: SDS steps over an orbit of cameras with the cache off, then on, on identical work.

    python -m hash3d.demo [--model DIR] [--steps 60] [--batch 4] [--mode features|noise] [--probability 1.0]

Without --model it writes a tiny random-weight Zero123 model (real diffusers layout) and uses it, so it runs
offline on a CPU. It optimises a small image seen from an orbit of cameras with Zero123 SDS and prints, per run,
the time, the UNet work done and saved, and the hit rate.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from .cache.config import CacheConfig, CachePolicyConfig
from .diffusion.guidance import Zero123Guidance, Zero123GuidanceConfig


def example_image(size: int = 64) -> torch.Tensor:
    """An RGBA test object: a shaded red ball over a blue box, on a transparent background."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    image = torch.zeros(4, size, size)
    box = (xs.abs() < 0.55) & (ys > 0.15) & (ys < 0.75)
    image[:3, box] = torch.tensor([0.2, 0.35, 0.8])[:, None]
    image[3, box] = 1
    r2 = xs**2 + (ys + 0.2) ** 2
    ball = r2 < 0.42**2
    shade = (1 - r2 / 0.42**2).clamp(0).sqrt()
    image[0, ball] = 0.4 + 0.6 * shade[ball]
    image[1, ball] = 0.1 * shade[ball]
    image[2, ball] = 0.1 * shade[ball]
    image[3, ball] = 1
    return image


def orbit(step: int, batch: int, n_views: int, elevation: float) -> tuple[torch.Tensor, ...]:
    """Cameras of one step: `batch` consecutive views of an `n_views`-view orbit."""
    index = (step * batch + torch.arange(batch)) % n_views
    azimuth = index.float() * 360.0 / n_views
    return torch.full((batch,), elevation), azimuth, torch.full((batch,), 1.2)


def run(config: Zero123GuidanceConfig, image: torch.Tensor, args, device: str) -> dict[str, float]:
    guidance = Zero123Guidance(config, device)
    guidance.set_image(image, elevation_deg=0.0, azimuth_deg=0.0, camera_distance=1.2)
    size = guidance.image_size
    target = torch.full((1, 3, size, size), 0.5, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([target], lr=0.02)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="cache on " if config.cache.enabled else "cache off", leave=False)
    for step in bar:
        guidance.update_step(step, args.steps)
        elevation, azimuth, distance = (c.to(device) for c in orbit(step, args.batch, args.views, 15.0))
        out = guidance(target.expand(args.batch, -1, -1, -1), elevation, azimuth, distance)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        with torch.no_grad():
            target.clamp_(0, 1)
        if config.cache.enabled and step % 10 == 0:
            bar.set_postfix(hit_rate=f"{guidance.cache_stats()['hit_rate']:.2f}")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = guidance.cache_stats()
    samples = args.steps * args.batch
    return {
        "seconds": seconds,
        "full": stats.get("full_samples", samples),
        "saved": stats.get("unet_calls_saved", 0),
        "hit_rate": stats.get("hit_rate", 0.0),
        "loss": float(out.loss.detach()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Zero123-family model (hub id or folder); default: write a tiny one")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--views", type=int, default=12, help="cameras on the orbit")
    parser.add_argument("--mode", choices=["features", "noise"], default="features")
    parser.add_argument("--probability", type=float, default=1.0, help="chance that a step tries the cache (η)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.views < 1:
        parser.error("--steps, --batch and --views must be >= 1")
    if not 0 <= args.probability <= 1:
        parser.error("--probability must be in [0, 1]")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from .testing.models import write_model

            model = str(write_model("zero123", "tiny", Path(tmp) / "zero123-tiny"))
            print(f"wrote a tiny random-weight Zero123 model to {model} (no download needed)")
        base = Zero123GuidanceConfig(
            pretrained_model_name_or_path=model,
            dtype="fp16" if args.device == "cuda" else "fp32",
            timestep_sampling="random_shared",
            min_step_percent=0.3,
            max_step_percent=0.7,
        )
        cache = CacheConfig(
            enabled=True,
            mode=args.mode,
            cell_size=(10.0, 360.0 / args.views, 0.1, 100.0),
            policy=CachePolicyConfig(probability=args.probability),
        )
        image = example_image()
        results = {
            "cache off": run(replace(base, cache=CacheConfig(enabled=False)), image, args, args.device),
            f"cache on ({args.mode}, η={args.probability:g})": run(replace(base, cache=cache), image, args, args.device),
        }

    off = results["cache off"]["seconds"]
    print(f"\n{args.steps} SDS steps x batch {args.batch} over a {args.views}-view orbit on {args.device}")
    print(f"{'run':<28} {'time s':>8} {'speed-up':>9} {'UNet full':>10} {'saved':>6} {'hit rate':>9}")
    for name, r in results.items():
        print(
            f"{name:<28} {r['seconds']:>8.2f} {off / r['seconds']:>8.2f}x {r['full']:>10} "
            f"{r['saved']:>6} {r['hit_rate']:>9.1%}"
        )
    if not math.isfinite(results["cache off"]["loss"]):
        raise SystemExit("the SDS loss is not finite")


if __name__ == "__main__":
    main()
