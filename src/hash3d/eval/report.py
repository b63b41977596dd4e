"""Per-item metric tables: mean ± std, a printed table, and JSON / CSV files.

Standard deviations are over items (population, ddof = 0). Infinite values (PSNR of identical images) are kept:
a mean containing one is +inf, and the summary also gives the mean and std of the finite values and how many
were infinite. JSON has no infinity, so non-finite numbers are written as the strings "inf", "-inf", "nan".
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hash3d.eval.errors import EvalError


@dataclass
class Stat:
    mean: float
    std: float
    n: int
    n_infinite: int = 0
    finite_mean: float = math.nan
    finite_std: float = math.nan

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        finite = [v for v in values if math.isfinite(v)]
        n_inf = sum(1 for v in values if math.isinf(v))
        fmean, fstd = _mean_std(finite)
        if n_inf:
            mean = math.fsum(values) / n if not any(math.isnan(v) for v in values) else math.nan
            return cls(mean, math.nan, n, n_inf, fmean, fstd)
        return cls(fmean, fstd, n, 0, fmean, fstd)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var)


def format_number(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return format_number(value, 0)


@dataclass
class MetricTable:
    """Metric values per item (a view, an image pair), with settings and notes to print and save beside them."""

    title: str
    row_label: str
    rows: list[str]
    columns: dict[str, list[float]]
    digits: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Stat]:
        return {name: Stat.of(values) for name, values in self.columns.items()}

    def _digits(self, name: str) -> int:
        return self.digits.get(name, 4)

    def mean_std_text(self, name: str) -> str:
        stat = self.summary()[name]
        d = self._digits(name)
        if stat.n_infinite:
            text = f"{format_number(stat.mean, d)} ({stat.n_infinite} of {stat.n} infinite"
            if stat.n_infinite < stat.n:
                text += f"; the other {stat.n - stat.n_infinite}: {format_number(stat.finite_mean, d)} ± {format_number(stat.finite_std, d)}"
            return text + ")"
        return f"{format_number(stat.mean, d)} ± {format_number(stat.std, d)}"

    def to_text(self) -> str:
        names = list(self.columns)
        header = [self.row_label] + [n.upper() for n in names]
        body = [[row] + [format_number(self.columns[n][i], self._digits(n)) for n in names] for i, row in enumerate(self.rows)]
        summary = self.summary()
        means = ["mean"] + [format_number(summary[n].mean, self._digits(n)) for n in names]
        stds = ["std"] + [
            "n/a" if summary[n].n_infinite else format_number(summary[n].std, self._digits(n)) for n in names
        ]
        grid = [header] + body + [means, stds]
        widths = [max(len(r[i]) for r in grid) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)).rstrip()

        rule = "  ".join("-" * w for w in widths)
        out = [self.title, line(header), rule] + [line(r) for r in body] + [rule, line(means), line(stds), ""]
        out += [f"{n.upper()}: {self.mean_std_text(n)}  (n = {summary[n].n})" for n in names]
        out += self.notes
        return "\n".join(out)

    def to_json_dict(self) -> dict[str, Any]:
        summary = {}
        for name, stat in self.summary().items():
            entry = {"mean": json_number(stat.mean), "std": json_number(stat.std), "n": stat.n}
            if stat.n_infinite:
                entry.update(
                    n_infinite=stat.n_infinite,
                    finite_mean=json_number(stat.finite_mean),
                    finite_std=json_number(stat.finite_std),
                )
            summary[name] = entry
        items = [
            {self.row_label: row, **{name: json_number(values[i]) for name, values in self.columns.items()}}
            for i, row in enumerate(self.rows)
        ]
        return {"title": self.title, "settings": self.settings, "summary": summary, "items": items, "notes": self.notes}

    def write(self, path: str | Path) -> Path:
        """Write to `path`: .json (everything) or .csv (one row per item, then mean and std rows)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise EvalError(f"--out {str(path)!r}: the file name must end in .json or .csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".json":
            path.write_text(json.dumps(self.to_json_dict(), indent=2, allow_nan=False) + "\n")
            return path
        summary = self.summary()
        names = list(self.columns)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([self.row_label] + names)
            for i, row in enumerate(self.rows):
                writer.writerow([row] + [repr(float(self.columns[n][i])) for n in names])
            writer.writerow(["mean"] + [repr(float(summary[n].mean)) for n in names])
            writer.writerow(["std"] + [repr(float(summary[n].std)) for n in names])
        return path
