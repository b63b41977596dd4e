"""Every shipped `_hash3d` config against its twin, from the current bench/training.py results of one device.

    python bench/shipped_table.py [--device h100] [--check] [FILE.json ...]

Reads bench/results-training-*-<device>.json (or the files given), takes each `shipped` row and the `cache off` row
of the same repeat (`pair_train_s`), and prints one markdown line per file: pipeline, the commit the rows ran
(the file's `commit` key, written by hand after a device run, whose checkout's git history may be stale; `?` when
missing) and steps, cache off and
shipped seconds and their ratio for each repeat, the ratio of their sums over the repeats (less swayed by one
run's spread), UNet samples from the cache, requests answered whole / split /
quiet / skipped, CUDA graphs the cache captured, UNet ms per step off → shipped, and the file. A ratio below 1.00 is a slow
row (a shipped config slower than its twin is a defect): it is printed in bold and, with --check, makes the exit
status 1. Files without a shipped row (older variants-only runs) are listed as such at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Pair:
    off_s: float
    shipped_s: float

    @property
    def ratio(self) -> float:
        """Speed of the shipped config relative to cache off (> 1: faster)."""
        return self.off_s / self.shipped_s


@dataclass
class ShippedResult:
    pipeline: str
    steps: int
    pairs: list[Pair]
    shipped: dict
    off: dict
    path: Path
    commit: str = "?"

    @property
    def slow(self) -> bool:
        return any(p.ratio < 1.0 for p in self.pairs)

    @property
    def summed_ratio(self) -> float:
        """Cache-off seconds over shipped seconds, each summed over the repeats: less swayed by one run's spread."""
        return sum(p.off_s for p in self.pairs) / sum(p.shipped_s for p in self.pairs)


def shipped_result(data: dict, path: Path) -> ShippedResult | None:
    """The shipped rows of one results file with their cache-off pairs; None when it holds no shipped row."""
    rows = data["rows"]
    shipped = [r for r in rows if r["label"].startswith("shipped") and "pair_train_s" in r]
    if not shipped:
        return None
    off = next(r for r in rows if r["label"] == "cache off")
    pairs = [Pair(r["pair_train_s"], r["train_s"]) for r in shipped]
    return ShippedResult(data["pipeline"], int(shipped[0]["steps"]), pairs, shipped[0], off, path,
                         str(data.get("commit", "?")))


def _shown(path: Path) -> Path:
    """A results file as the docs cite it: relative to the checkout when inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _seconds(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def request_counts(row: dict) -> str:
    """A cached row's requests answered whole / split / quiet (probes) / skipped, as one table cell."""
    return (f"{row.get('answered_requests', 0)} / {row.get('split_requests', 0)} / {row.get('probed_requests', 0)} / "
            f"{row.get('skipped_requests', 0)}")


def table_line(result: ShippedResult) -> str:
    s, off = result.shipped, result.off
    ratios = " / ".join(f"**{p.ratio:.2f}×**" if p.ratio < 1.0 else f"{p.ratio:.2f}×" for p in result.pairs)
    share = s["saved"] / s["unet_samples"] if s.get("unet_samples") else 0.0
    requests = request_counts(s)
    unet = f"{off['parts_ms']['unet']:.1f} → {s['parts_ms']['unet']:.1f}"
    summed = f"{result.summed_ratio:.3f}" if len(result.pairs) > 1 else "-"
    cells = [result.pipeline, result.commit, str(result.steps), _seconds([p.off_s for p in result.pairs]),
             _seconds([p.shipped_s for p in result.pairs]), ratios, summed, f"{share:.0%}", requests,
             str(s.get("graphs_captured", 0)), unet, f"`{_shown(result.path)}`"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| pipeline | commit | steps | cache off s | shipped s | shipped vs off | summed | UNet samples from cache | "
          "whole / split / quiet / skipped | cache graphs | UNet ms/step off → shipped | raw JSON |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="results files (default: bench/results-training-*-DEVICE.json)")
    parser.add_argument("--device", default="h100", help="device part of the default file names (default: h100)")
    parser.add_argument("--check", action="store_true", help="exit 1 when some shipped row is slower than its twin")
    args = parser.parse_args(argv)
    files = args.files or sorted((REPO / "bench").glob(f"results-training-*-{args.device}.json"))
    if not files:
        print(f"shipped_table.py: no bench/results-training-*-{args.device}.json; run bench/training.py on that device "
              "first, or name the files", file=sys.stderr)
        return 2
    results, without = [], []
    for path in files:
        result = shipped_result(json.loads(path.read_text()), path.resolve())
        if result is None:
            without.append(path.name)
        else:
            results.append(result)
    print(HEADER)
    for result in results:
        print(table_line(result))
    slow = [r.pipeline for r in results if r.slow]
    print(f"\n{len(results)} pipelines; slower than cache off in some repeat: {', '.join(slow) if slow else 'none'}")
    if without:
        print(f"no shipped row in: {', '.join(without)}")
    return 1 if args.check and slow else 0


if __name__ == "__main__":
    sys.exit(main())
