"""bench/shipped_table.py: shipped rows against their twins, from results files written here (no GPU)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def table(load_bench):
    return load_bench("shipped_table")


def _row(label, train_s, unet_ms, pair=None, **counts):
    row = {"label": label, "train_s": train_s, "steps": 100, "parts_ms": {"unet": unet_ms}, **counts}
    if pair is not None:
        row["pair_train_s"] = pair
    return row


def _write(path, pipeline, rows, **keys):
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "pipeline": pipeline, "rows": rows, **keys}))
    return path


def test_rows_ratios_and_the_slow_check(table, tmp_path, capsys):
    counts = dict(saved=30, unet_samples=120, answered_requests=2, split_requests=5, probed_requests=7,
                  skipped_requests=40, graphs_captured=9)
    fast = _write(tmp_path / "a.json", "fast-pipe", [
        _row("cache off", 10.0, 20.0), _row("shipped", 8.0, 12.0, pair=10.0, **counts),
        _row("cache off (2)", 10.5, 20.0), _row("shipped (2)", 10.0, 12.0, pair=10.5, **counts)], commit="abc1234")
    slow = _write(tmp_path / "b.json", "slow-pipe", [
        _row("cache off", 6.0, 15.0), _row("shipped", 6.6, 16.0, pair=6.0, saved=0, unet_samples=100)])
    old = _write(tmp_path / "c.json", "old-pipe", [_row("cache off", 5.0, 1.0), _row("cache noise η=1", 5.0, 1.0)])

    assert table.main([str(fast), str(slow), str(old)]) == 0
    out = capsys.readouterr().out.splitlines()
    fast_line = next(line for line in out if line.startswith("| fast-pipe"))
    cells = [c.strip() for c in fast_line.strip("|").split("|")]
    assert cells[:11] == ["fast-pipe", "abc1234", "100", "10.00 / 10.50", "8.00 / 10.00", "1.25× / 1.05×",
                          f"{20.5 / 18.0:.3f}", "25%", "2 / 5 / 7 / 40", "9", "20.0 → 12.0"]
    slow_line = next(line for line in out if line.startswith("| slow-pipe"))
    assert f"**{6.0 / 6.6:.2f}×**" in slow_line  # a slow row stands out
    assert [c.strip() for c in slow_line.strip("|").split("|")][6] == "-"  # one repeat: no sum to show
    assert slow_line.startswith("| slow-pipe | ? | 100 |")  # no commit key: said so
    header = next(line for line in out if line.startswith("| pipeline"))
    assert len(header.split("|")) == len(fast_line.split("|"))
    assert "slower than cache off in some repeat: slow-pipe" in out[-2] and out[-1] == "no shipped row in: c.json"
    assert table.main(["--check", str(fast), str(slow)]) == 1
    assert table.main(["--check", str(fast)]) == 0


def test_no_results_is_a_clear_error(table, capsys):
    assert table.main(["--device", "no-such-gpu"]) == 2
    assert "no bench/results-training-*-no-such-gpu.json" in capsys.readouterr().err


def test_shipped_rows_script_names_only_pipelines_bench_training_knows(load_bench, tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "shipped_rows.sh"
    names = subprocess.run(["bash", str(script), "list"], capture_output=True, text=True, check=True).stdout.split()
    pipelines = load_bench("training").PIPELINES
    assert names and len(names) == len(set(names))
    # every row runs bench/training.py with a pipeline of its table: print the commands instead of running them
    run = subprocess.run(["bash", str(script), ",".join(names), str(tmp_path), "100000"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": "echo"})  # fmt: skip
    commands = [line.split("--out-dir")[0].split() for line in run.stdout.splitlines() if "bench/training.py" in line
                and not line.startswith("===")]  # fmt: skip
    assert len(commands) == len(names)
    assert {c[c.index("--pipeline") + 1] for c in commands} <= set(pipelines)
    bad = subprocess.run(["bash", str(script), "gs-shading-100,nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown group or row 'nope'" in bad.stderr
