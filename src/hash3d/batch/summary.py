"""The one summary of a batch: summary.md (a table to read), summary.json (everything), summary.csv (a row per run).

Per item and config: status, training time (the training loop's wall time, model loading and writing left out),
it/s (steps / that time), the cache's hit rate (lookups answered from the cache) and UNet calls saved, and the
metrics (CLIP, PSNR, SSIM, LPIPS). With two configs (--compare-with) every column is shown for each, side by
side, plus the speed-up (time of the cache-off run / time of the cache-on run). The mean row is over the items
finished in every config, so both columns average the same items.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ViewSpec
from .jobs import JobSpec, Variant
from .scoring import Scorer, as_float
from .state import ItemDir, write_json

RUN_FIELDS = ("status", "steps", "train_s", "it_s", "hit_rate", "unet_calls_saved", "unet_calls_run", "run_s", "views_s")
METRIC_DIGITS = {"clip": 4, "psnr": 2, "ssim": 4, "lpips": 4}


@dataclass
class RunRow:
    status: str
    """'finished', 'failed', 'unfinished' (started, never ended: killed or running) or 'new' (not run)."""
    steps: int | None = None
    train_s: float | None = None
    it_s: float | None = None
    hit_rate: float | None = None
    unet_calls_saved: float | None = None
    unet_calls_run: float | None = None
    run_s: float | None = None
    views_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def value(self, key: str) -> float | None:
        return as_float(self.metrics.get(key)) if key in METRIC_DIGITS else as_float(getattr(self, key, None))


@dataclass
class ItemRow:
    item: str
    label: str
    runs: dict[str, RunRow]

    def complete(self) -> bool:
        return all(r.status == "finished" for r in self.runs.values())


def run_row(job: JobSpec, scorer: Scorer | None) -> RunRow:
    item = ItemDir(job)
    status = item.status()
    if status != "finished":
        error = (item.error() or {}).get("error") if status == "failed" else None
        return RunRow(status, error=error)
    r = item.result() or {}
    cache = r.get("cache") or {}
    return RunRow(
        "finished", r.get("steps"), r.get("train_s"), r.get("it_s"), cache.get("hit_rate"), cache.get("unet_calls_saved"),
        cache.get("unet_calls_run"), r.get("run_s"), r.get("views_s"), scorer.score(job) if scorer else {},
    )  # fmt: skip


def label_of(job: JobSpec) -> str:
    return job.target if job.kind == "text" else Path(job.target).name


def collect(jobs: list[JobSpec], scorer: Scorer | None) -> list[ItemRow]:
    rows: dict[str, ItemRow] = {}
    for job in jobs:
        row = rows.setdefault(job.item, ItemRow(job.item, label_of(job), {}))
        row.runs[job.variant] = run_row(job, scorer)
    return list(rows.values())


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return math.fsum(vals) / len(vals) if all(math.isfinite(v) for v in vals) else sum(vals) / len(vals)


def means(rows: list[ItemRow], variant: str, keys: list[str]) -> dict[str, float | None]:
    complete = [r for r in rows if r.complete()]
    return {k: _mean([r.runs[variant].value(k) for r in complete]) for k in keys}


def speedup(rows: list[ItemRow], variants: list[Variant]) -> tuple[str, str] | None:
    """(cache-off variant, cache-on variant) when the batch compares exactly those two."""
    if len(variants) != 2:
        return None
    off = [v.name for v in variants if v.cache is False or v.cache is None]
    on = [v.name for v in variants if v.cache]
    return (off[0], on[0]) if len(off) == 1 and len(on) == 1 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def total_speedup(rows: list[ItemRow], pair: tuple[str, str]) -> float | None:
    complete = [r for r in rows if r.complete()]
    off = [r.runs[pair[0]].train_s for r in complete]
    on = [r.runs[pair[1]].train_s for r in complete]
    if not complete or any(v is None for v in off + on):
        return None
    return _ratio(math.fsum(off), math.fsum(on))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- formatting
def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if key == "hit_rate":
        return f"{100 * value:.1f}%"
    if key in ("unet_calls_saved", "steps"):
        return f"{value:.0f}"
    if key == "speedup":
        return f"{value:.2f}×"
    if key in METRIC_DIGITS:
        return f"{value:.{METRIC_DIGITS[key]}f}"
    return f"{value:.2f}" if key == "it_s" else f"{value:.1f}"


HEADERS = {"train_s": "time s", "it_s": "it/s", "hit_rate": "hit rate", "unet_calls_saved": "UNet calls saved",
           "clip": "CLIP", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}  # fmt: skip


def _columns(rows: list[ItemRow], variants: list[Variant], metrics: list[str]) -> list[tuple[str, str | None]]:
    """(key, variant) pairs; cache columns only for configs with the cache on; 'speedup' after the times."""
    pair = speedup(rows, variants)
    cols: list[tuple[str, str | None]] = []
    for key in ["train_s", "it_s", "hit_rate", "unet_calls_saved", *metrics]:
        for v in variants:
            if key in ("hit_rate", "unet_calls_saved") and not v.cache:
                continue
            cols.append((key, v.name))
        if key == "train_s" and pair:
            cols.append(("speedup", None))
    return cols


def _cell(row: ItemRow, key: str, variant: str | None, pair: tuple[str, str] | None) -> str:
    if key == "speedup":
        assert pair is not None
        if not row.complete():
            return "–"
        return fmt(_ratio(row.runs[pair[0]].train_s, row.runs[pair[1]].train_s), "speedup")
    run = row.runs[variant]  # type: ignore[index]
    if run.status != "finished":
        return run.status if key == "train_s" else "–"
    return fmt(run.value(key), key)


def to_markdown(rows: list[ItemRow], variants: list[Variant], metrics: list[str], title: str, notes: list[str]) -> str:
    pair = speedup(rows, variants)
    cols = _columns(rows, variants, metrics)
    short = {v.name: v.label for v in variants}
    multi = len(variants) > 1

    def head(key: str, variant: str | None) -> str:
        if key == "speedup":
            return "speed-up"
        return HEADERS[key] + (f" ({short[variant]})" if multi and variant else "")  # type: ignore[index]

    lines = [f"# {title}", ""]
    if multi:
        lines += ["Configs: " + "; ".join(f"**{v.label}** = `{Path(v.config).name}`" for v in variants), ""]
    lines.append("| item | " + " | ".join(head(k, v) for k, v in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for row in rows:
        label = row.label.replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(_cell(row, k, v, pair) for k, v in cols) + " |")
    complete = [r for r in rows if r.complete()]
    mean_cells = []
    for key, variant in cols:
        if key == "speedup":
            mean_cells.append(fmt(total_speedup(rows, pair), "speedup") if pair else "–")
        else:
            mean_cells.append(fmt(means(rows, variant, [key])[key], key))  # type: ignore[arg-type]
    lines.append(f"| **mean** ({len(complete)} of {len(rows)}) | " + " | ".join(mean_cells) + " |")
    if pair:
        lines += ["", "Speed-up: training time with the cache off / with it on (mean row: total over the items)."]
    failed = [(r.item, v, run) for r in rows for v, run in r.runs.items() if run.status != "finished"]
    if failed:
        lines += ["", "Not finished (a rerun of the same command redoes them):"]
        lines += [f"- {item} ({v}): {run.status}" + (f": {run.error}" if run.error else "") for item, v, run in failed]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return value


def to_json(rows: list[ItemRow], variants: list[Variant], metrics: list[str], front_end: str, views: ViewSpec,
            notes: list[str]) -> dict[str, Any]:  # fmt: skip
    keys = [k for k in RUN_FIELDS if k != "status"] + metrics
    pair = speedup(rows, variants)
    items = []
    for row in rows:
        runs = {}
        for v, run in row.runs.items():
            entry = {k: _json_value(getattr(run, k)) for k in RUN_FIELDS}
            entry.update({k: _json_value(val) for k, val in run.metrics.items()})
            entry["error"] = run.error
            runs[v] = entry
        entry = {"item": row.item, "label": row.label, "runs": runs}
        if pair and row.complete():
            entry["speedup"] = _ratio(row.runs[pair[0]].train_s, row.runs[pair[1]].train_s)
        items.append(entry)
    return {
        "front_end": front_end,
        "variants": [asdict(v) for v in variants],
        "views": asdict(views),
        "metrics": metrics,
        "n_items": len(rows),
        "n_complete": sum(r.complete() for r in rows),
        "items": items,
        "mean": {v.name: {k: _json_value(x) for k, x in means(rows, v.name, keys).items()} for v in variants},
        "speedup": total_speedup(rows, pair) if pair else None,
        "notes": notes,
    }


def write_csv(path: Path, rows: list[ItemRow], variants: list[Variant], metrics: list[str]) -> Path:
    keys = [k for k in RUN_FIELDS if k != "status"] + metrics
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "label", "config", "cache", "status", *keys, "error"])
        cache = {v.name: v.cache for v in variants}
        for row in rows:
            for v, run in row.runs.items():
                values = [_csv(run.value(k), k) for k in keys]
                w.writerow([row.item, row.label, v, cache[v], run.status, *values, run.error or ""])
        n = sum(r.complete() for r in rows)
        for v in variants:
            m = means(rows, v.name, keys)
            w.writerow(["mean", f"{n} items", v.name, cache[v.name], "", *[_csv(m[k], k) for k in keys], ""])
    return path


def _csv(value: float | None, key: str) -> str:
    if value is None:
        return ""
    return str(int(value)) if key == "steps" and float(value).is_integer() else repr(float(value))


def write_summary(out: Path, jobs: list[JobSpec], variants: list[Variant], scorer: Scorer | None, views: ViewSpec,
                  front_end: str, notes: list[str]) -> tuple[list[ItemRow], str, list[Path]]:  # fmt: skip
    """Score what is finished and not yet scored, then write summary.md / .json / .csv; returns the rows, the
    markdown and the files written."""
    rows = collect(jobs, scorer)
    all_notes = list(notes) + (list(dict.fromkeys(scorer.notes)) if scorer else [])
    metrics = scorer.metric_names if scorer else []
    title = f"Batch: {front_end}, {len(rows)} item(s), {views.n_views} views at elevation {views.elevation_deg:g}°"
    markdown = to_markdown(rows, variants, metrics, title, all_notes)
    paths = [out / "summary.md", out / "summary.json", out / "summary.csv"]
    paths[0].write_text(markdown)
    write_json(paths[1], to_json(rows, variants, metrics, front_end, views, all_notes))
    write_csv(paths[2], rows, variants, metrics)
    return rows, markdown, paths
