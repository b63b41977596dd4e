"""bench/field_precision.py on the CPU with a few points: every row; float32 equal to itself, the half precisions not."""

import json


def test_rows_of_every_precision_and_point_set(load_bench, tmp_path, capsys):
    bench = load_bench("field_precision")
    out = tmp_path / "rows.json"
    rows = bench.main(["--device", "cpu", "--rays", "16", "--samples", "8", "--iters", "1", "--out", str(out)])
    assert [(r["precision"], r["points"]) for r in rows] == [
        (p, s) for p in ("float32", "mlp_precision bfloat16", "mlp_precision float16") for s in ("coherent", "uniform")]
    for r in rows:
        assert r["step_ms"] > 0 and r["density_ms"] > 0
        if r["precision"] == "float32":  # the reference itself: the same deterministic CPU computation
            assert r["normal_max_diff"] == 0 and r["table_grad_rel_diff"] == 0
        else:
            assert r["normal_max_diff"] > 0
    saved = json.loads(out.read_text())
    assert saved["points"] == 128 and len(saved["rows"]) == 6 and set(saved["hash_grid_backward_ms"]) == {"coherent", "uniform"}
    printed = capsys.readouterr().out
    assert "| mlp_precision float16 | uniform |" in printed and "hash grid backward alone" in printed


def test_ray_points_lie_in_the_box_in_order_along_each_ray(load_bench):
    import torch

    bench = load_bench("field_precision")
    points = bench.ray_points(4, 5, 1.5, torch.Generator().manual_seed(0), torch.device("cpu")).reshape(4, 5, 3)
    assert points.abs().max() <= 1.5
    steps = (points[:, 1:] - points[:, :-1]).norm(dim=-1)
    # samples spaced radius / (samples - 1) along the ray; clamping to the box (1-Lipschitz) only shortens steps
    assert (steps <= 1.5 / 4 + 1e-5).all() and (steps > 0).any()
