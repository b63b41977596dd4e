"""bench/new_shapes.py on the CPU: the call pattern it times, its one-off arithmetic, the tiny model end to end."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("new_shapes")


def test_each_size_gets_a_first_a_second_and_five_steady_calls_after_the_largest_warms(bench):
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2

    rows = bench.measure(fn, lambda size: (torch.zeros(size, 3),), [6, 2], rounds=2, warm=3)
    assert seen == [6] * 3 + ([6] * 7 + [2] * 7) * 2
    assert [(r.round, r.size) for r in rows] == [(1, 6), (1, 2), (2, 6), (2, 2)]
    assert all(min(r.first_ms, r.second_ms, r.steady_ms) > 0 for r in rows)


def test_the_table_sums_one_offs_per_round(bench):
    rows = [bench.Row(1, 4, 30.0, 20.0, 5.0), bench.Row(1, 2, 12.0, 8.0, 2.0), bench.Row(2, 4, 12.0, 9.0, 5.0),
            bench.Row(2, 2, 5.0, 4.0, 2.0)]
    table = bench.format_table(rows, "t")
    assert "| 1 | 4 | 30.0 | 20.0 | 5.0 | 40.0 |" in table
    assert "56 ms in round 1, 16 ms in a later round (per process: 40 ms)" in table


def test_tiny_model_rows_json_and_table(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--size", "tiny", "--side", "8", "--sizes", "4", "2", "--rounds", "2",
                       "--models", str(tmp_path / "models"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["round"], r["size"]) for r in result["rows"]] == [(1, 4), (1, 2), (2, 4), (2, 2)]
    for r in result["rows"]:
        assert r["steady_ms"] > 0
        assert r["one_off_ms"] == pytest.approx(r["first_ms"] + r["second_ms"] - 2 * r["steady_ms"])
    table = capsys.readouterr().out
    assert "UNet first calls at new batch sizes, zero123 (tiny), 8² latents, cpu" in table
    first = sum(r["one_off_ms"] for r in result["rows"] if r["round"] == 1)
    later = sum(r["one_off_ms"] for r in result["rows"] if r["round"] == 2)
    assert f"{first:.0f} ms in round 1, {later:.0f} ms in a later round (per process: {first - later:.0f} ms)" in table


@pytest.mark.parametrize("args", [["--sizes", "0"], ["--rounds", "0"], ["--side", "0"]])
def test_impossible_values_are_refused(bench, args):
    with pytest.raises(SystemExit, match="must be at least 1"):
        bench.main(["--device", "cpu", "--size", "tiny", *args])
