"""bench/training.py's table without a GPU: the expected speed-ups from the step split and the cache's counts."""

from __future__ import annotations

import pytest


@pytest.fixture
def bench(load_bench):
    return load_bench("training")


def _row(label, train_s, unet_ms, mode=None, saved=0, samples=0, requests=0, answered=0, split=0, skipped=0):
    parts = {p: 0.0 for p in ("render", "vae_fwd", "vae_bwd", "unet", "guidance_rest", "backward_rest", "regularisers",
                              "optimiser", "other")}  # fmt: skip
    parts["unet"] = unet_ms
    return {"label": label, "train_s": train_s, "steps": 100, "it_per_s": 100 / train_s, "peak_gb": 1.0,
            "parts_ms": parts, "mode": mode, "strategy": "auto" if mode else None, "saved": saved,
            "unet_samples": samples, "requests": requests, "answered_requests": answered, "split_requests": split,
            "skipped_requests": skipped, "graphs_captured": 3 if mode else 0}  # fmt: skip


def test_expected_speedups_per_sample_and_per_whole_request(bench):
    off = _row("cache off", 10.0, 25.0)  # 100 ms a step, a quarter of it UNet
    # 60 % of the samples came from the cache, but only 20 of 100 requests were answered whole
    on = _row("shipped", 9.5, 20.0, mode="noise", saved=720, samples=1200, requests=100, answered=20, split=70, skipped=10)
    hit_cost = {"noise": 0.05, "features": 0.4}
    per_sample = bench.expected_speedup(off, on, hit_cost)
    whole = bench.expected_speedup(off, on, hit_cost, whole=True)
    assert per_sample == pytest.approx(1 / (1 - 0.25 * 0.6 * 0.95))
    assert whole == pytest.approx(1 / (1 - 0.25 * 0.2 * 0.95))
    assert bench.expected_speedup(off, off, hit_cost) is None
    table = bench.format_table([off, on], off, hit_cost)
    head, _, off_line, on_line = table.splitlines()
    assert "expected (whole requests)" in head and "requests answered whole / split / quiet / skipped" in head
    cells = [c.strip() for c in on_line.strip("|").split("|")]
    assert cells[5:10] == ["1.05x", f"{per_sample:.2f}x", f"{whole:.2f}x", "60%", "20 / 70 / 0 / 10"]
    assert [c.strip() for c in off_line.strip("|").split("|")][6:10] == ["-", "-", "-", "-"]


def test_request_counts_from_a_report_or_a_metrics_row(bench):
    report = {"tried": 90, "skipped": 10, "probed": 4, "answered_requests": 20, "split_requests": 70, "hits": 5}
    counts = {"requests": 104, "skipped_requests": 10, "probed_requests": 4, "answered_requests": 20,
              "split_requests": 70}
    assert bench._request_counts(report) == counts
    metrics_row = {k: float(v) for k, v in report.items()}  # the launcher's metrics.csv holds floats
    assert bench._request_counts(metrics_row) == counts
    assert bench._request_counts({}) == dict.fromkeys(counts, 0)  # cache off: nothing counted


def test_policy_stats_from_a_report_or_a_metrics_row(bench):
    report = {"tried": 90, "policy_trying": 0.0, "policy_try_ms": 31.5, "policy_skip_ms": 30.0, "policy_switches": 2}
    stats = {"policy_trying": 0.0, "policy_try_ms": 31.5, "policy_skip_ms": 30.0, "policy_switches": 2.0}
    assert bench._policy_stats(report) == stats
    # metrics.csv: strings, empty where a step logged no such value (e.g. before the first measurement)
    assert bench._policy_stats({k: str(v) for k, v in report.items()} | {"policy_skip_ms": ""}) == {
        k: v for k, v in stats.items() if k != "policy_skip_ms"}
    assert bench._policy_stats({"tried": 5}) == {}  # the fixed policy, or cache off


def test_a_runs_peak_starts_after_earlier_runs_cycles_are_freed(bench, monkeypatch):
    import gc
    import weakref

    import torch

    calls = []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda name=name: calls.append(name))

    class Model:
        pass

    gc.disable()  # no automatic collection between building the cycle and the call
    try:
        model, registry = Model(), Model()
        model.hook, registry.module = registry, model  # the cycle a diffusers hook makes
        alive = weakref.ref(model)
        del model, registry
        assert alive() is not None  # only the cyclic collector frees it
        bench.fresh_peak_memory()
    finally:
        gc.enable()
    assert alive() is None and calls == ["synchronize", "empty_cache", "reset_peak_memory_stats"]


def test_pairs_alternate_their_order(bench):
    """off, shipped, then shipped, off: each repeat is one pair, and a drift over the process cancels over two."""
    assert bench.pair_order(1) == [("off", 1), ("shipped", 1)]
    order = bench.pair_order(4)
    assert order == [("off", 1), ("shipped", 1), ("shipped", 2), ("off", 2),
                     ("off", 3), ("shipped", 3), ("shipped", 4), ("off", 4)]  # fmt: skip
    # a linear drift (run i costs i) adds the same total to both sides over an even number of repeats
    assert sum(i for i, (run, _) in enumerate(order) if run == "off") == sum(
        i for i, (run, _) in enumerate(order) if run == "shipped")


def test_paired_runs_warm_up_both_configs_and_pair_each_shipped_row_with_its_own_cache_off_run(bench):
    calls, rows = [], []

    def go(config, n, extra, label):
        calls.append((config, n, tuple(extra), label))
        rows.append({"label": label, "train_s": float(len(calls))})  # the k-th run takes k seconds
        return rows[-1]

    off = bench.paired_runs(go, "base.yaml", "base_hash3d.yaml", 100, 2, True, "sds_weight=0", rows.clear)
    assert calls == [
        ("base.yaml", 30, (), "warm-up"), ("base_hash3d.yaml", 30, (), "warm-up"),
        ("base.yaml", 100, (), "cache off"), ("base.yaml", 100, ("sds_weight=0",), "no guidance (SDS weight 0)"),
        ("base_hash3d.yaml", 100, (), "shipped"),
        ("base_hash3d.yaml", 100, (), "shipped (2)"), ("base.yaml", 100, (), "cache off (2)"),
    ]  # fmt: skip
    assert [r["label"] for r in rows][0] == "cache off" and off is rows[0]  # the warm-ups' rows were dropped
    by_label = {r["label"]: r for r in rows}
    assert by_label["shipped"]["pair_train_s"] == 3.0 and by_label["shipped (2)"]["pair_train_s"] == 7.0
    assert "pair_train_s" not in by_label["cache off"]
    calls.clear()
    bench.paired_runs(go, "base.yaml", "base_hash3d.yaml", 20, 1, False, None, rows.clear)
    assert [c[3] for c in calls] == ["cache off", "shipped"] and calls[0][1] == 20


def test_step_parts_add_up_to_the_step_and_give_the_regularisers_their_own_part(bench):
    """Section totals (ms over the run) -> ms per step; nested sections (VAE inside guidance and backward, the
    regularisers inside the forward pass) are taken out of their parents, and the parts sum to the measured step."""
    totals = {"data": 10.0, "forward": 900.0, "render": 300.0, "guidance": 400.0, "vae_encode": 100.0, "unet": 200.0,
              "regularisers": 150.0, "backward": 500.0, "vae_backward": 120.0, "optimizer": 40.0, "densify": 0.0}
    parts = bench.step_parts(totals, train_s=2.0, steps=10)
    assert parts["regularisers"] == 15.0 and parts["guidance_rest"] == 10.0 and parts["backward_rest"] == 38.0
    assert sum(parts.values()) == pytest.approx(2000.0 / 10)
    assert parts["other"] == pytest.approx((2000.0 - (10 + 300 + 400 + 500 + 40 + 0) + 10 - 150) / 10)
    assert list(parts) == bench.PARTS


def test_kernel_profile_table_per_section_and_overall(bench):
    """Made-up kernel rows over 2 profiled steps of 100 ms: section totals and their top kernels (cut to
    `per_section`), then the top kernels overall; long names are shortened and pipes escaped."""
    from hash3d.profiling import Attribution, KernelRow

    long_name = "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, " + "x" * 40
    rows = [KernelRow("backward", "sm90_gemm|bf16", 4, 60.0, "aten::mm"), KernelRow("render", long_name, 6, 40.0),
            KernelRow("render", "render_kernel", 2, 20.0), KernelRow("backward", "reduce", 2, 10.0)]
    found = Attribution(rows, {"backward": 70.0, "render": 60.0})
    table = bench.format_profile(found, steps=2, step_ms=100.0, per_section=1, overall=3)
    short = long_name[:77] + "..."
    assert len(short) == 80
    assert table.splitlines() == [
        "| section | kernel | launched by | calls/step | ms/step | % of step |",
        "|---|---|---|---|---|---|",
        "| all | (all kernels) | - | - | 65.00 | 65.0% |",
        "| **backward** | (all) | - | - | 35.00 | 35.0% |",
        "| backward | sm90_gemm\\|bf16 | aten::mm | 2.0 | 30.00 | 30.0% |",
        "| **render** | (all) | - | - | 30.00 | 30.0% |",
        f"| render | {short} | - | 3.0 | 20.00 | 20.0% |",
        "",
        "Top 3 kernels overall:",
        "",
        "| section | kernel | launched by | calls/step | ms/step | % of step |",
        "|---|---|---|---|---|---|",
        "| backward | sm90_gemm\\|bf16 | aten::mm | 2.0 | 30.00 | 30.0% |",
        f"| render | {short} | - | 3.0 | 20.00 | 20.0% |",
        "| render | render_kernel | - | 1.0 | 10.00 | 10.0% |",
    ]  # fmt: skip


def test_option_runs_follow_a_kept_first_run_with_both_configs(bench):
    calls = []

    def go(config, n, extra, label):
        calls.append((config, n, extra, label))
        return {}

    bench.option_runs(go, "base.yaml", "base_hash3d.yaml", 100, ["a.b=true", "c=1"], True)
    assert calls == [
        ("base.yaml", 30, ["a.b=true"], "first run + a.b=true"),
        ("base.yaml", 100, ["a.b=true"], "cache off + a.b=true"),
        ("base_hash3d.yaml", 100, ["a.b=true"], "shipped + a.b=true"),
        ("base.yaml", 30, ["c=1"], "first run + c=1"),
        ("base.yaml", 100, ["c=1"], "cache off + c=1"),
        ("base_hash3d.yaml", 100, ["c=1"], "shipped + c=1"),
    ]
    calls.clear()
    bench.option_runs(go, "base.yaml", "base_hash3d.yaml", 20, ["a=1"], False)
    assert [c[3] for c in calls] == ["cache off + a=1", "shipped + a=1"]
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.option_runs(go, "base.yaml", "base_hash3d.yaml", 20, ["compile"], False)


PROFILE_COMMAND = ["--pipeline", "stable-zero123", "--steps", "20", "--no-warmup", "--profile", "10",
                   "--profile-after", "300", "--profile-config", "base", "--out-dir", "DIR"]  # fmt: skip


def test_profile_after_parses_and_needs_profile(bench, capsys):
    """The last phase's command: profile 10 steps of the base config after 300; --profile-after alone, a negative
    skip or no profiled step is refused with a message."""
    args = bench.parse_args(PROFILE_COMMAND)
    assert (args.profile, args.profile_after, args.profile_config) == (10, 300, "base")
    assert (args.steps, args.no_warmup, args.out_dir, args.extra) == (20, True, "DIR", [])
    assert bench.parse_args(["--profile", "10"]).profile_after == 0
    assert bench.parse_args([]).profile is None
    for argv, message in [(["--profile-after", "300"], "--profile-after needs --profile N"),
                          (["--profile", "10", "--profile-after", "-1"], "--profile-after takes a number of steps >= 0"),
                          (["--profile", "0"], "--profile takes a number of steps >= 1")]:  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def _steps(n: int, slow_until: int = 0, trained: list | None = None) -> dict:
    """A stand-in for a training run: n steps, each a section and `step_done`; the first `slow_until` sleep longer."""
    import time

    import torch

    from hash3d.profiling import section, step_done

    w = torch.randn(16, 16)
    for i in range(n):
        with section("data"):
            w @ w
        time.sleep(0.1 if i < slow_until else 0.005)
        step_done()
    if trained is not None:
        trained.append(n)
    return {"train_s": 123.0}


def test_profiled_run_trains_the_skipped_and_the_profiled_steps_and_records_the_profiled_ones(bench):
    trained = []
    kp, row = bench.profiled_run(lambda n: _steps(n, trained=trained), after=4, steps=3)
    assert trained == [7] and row == {"train_s": 123.0}
    assert kp.recorded_steps == 3 and sum(e.name == "data" for e in kp.profiler.events()) == 3
    with pytest.raises(SystemExit, match=r"recorded 0 steps after 4, not 3: .*step_done"):
        bench.profiled_run(lambda n: {"train_s": 1.0}, after=4, steps=3)  # a loop that never says a step is done


def test_profiled_step_ms_is_the_recorded_span_over_the_profiled_steps(bench):
    """After skipped steps: the profile's span over the profiled steps (not the run's training time), within what the
    host clock measured around it; without: the run's training time over the steps."""
    import time

    from hash3d.profiling import kernel_profile

    start = time.perf_counter()
    with kernel_profile(skip_steps=2) as kp:
        _steps(2, slow_until=2)
        after_skipped = time.perf_counter()
        _steps(4)
    end = time.perf_counter()
    step_ms = bench.profiled_step_ms(kp, train_s=100.0)
    assert step_ms == kp.recorded_ms() / 4
    assert 4 * step_ms <= 1000 * (end - start) - 200  # the two slow skipped steps are not in it
    assert 1000 * (end - after_skipped) >= 4 * step_ms >= 4 * 5  # the four profiled steps' sleeps are
    with kernel_profile() as kp:
        _steps(4)
    assert bench.profiled_step_ms(kp, train_s=2.0) == 500.0


def test_profile_record_holds_the_skipped_steps_and_the_profiled_step_time(bench):
    from hash3d.profiling import Attribution, KernelRow

    found = Attribution([KernelRow("render", "k", 20, 50.0)], {"render": 50.0})
    record = bench.profile_record(found, after=300, steps=10, step_ms=42.0)
    assert (record["steps"], record["profile_after"], record["profiled_step_ms"]) == (10, 300, 42.0)
    assert record["totals_ms_per_step"] == {"render": 5.0}
    assert record["rows"] == [{"section": "render", "name": "k", "calls": 20, "ms": 50.0, "launched_by": "",
                               "calls_per_step": 2.0, "ms_per_step": 5.0}]  # fmt: skip
    assert bench.profiled_steps(300, 10) == "10 steps (301-310)" and bench.profiled_steps(0, 10) == "10 steps"
