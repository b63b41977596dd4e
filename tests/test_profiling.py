"""hash3d.profiling: named GPU sections for the benchmarks, free when no timer is active."""

from __future__ import annotations

import pytest
import torch

from hash3d.profiling import SectionTimer, active, section, time_backward, timed


def test_sections_are_no_ops_without_a_timer():
    @timed("work")
    def work(x):
        return x * 2

    with section("outer"):
        assert work(torch.ones(2)).tolist() == [2.0, 2.0]
    assert active() is None


def test_timer_is_only_active_inside_its_block():
    timer = SectionTimer()
    with timer:
        assert active() is (timer if torch.cuda.is_available() else None)
    assert active() is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_timer_records_sections_and_backward_spans():
    x = torch.randn(256, 256, device="cuda", requires_grad=True)
    with SectionTimer() as timer:
        for _ in range(3):
            with section("matmul"):
                y = x @ x
            z = y.tanh()
            time_backward("tanh_backward", z, y)
            z.sum().backward()
    assert timer.counts() == {"matmul": 3, "tanh_backward": 3}
    totals = timer.totals_ms()
    assert all(v > 0 for v in totals.values())


def test_nerf_regularisers_are_a_section_of_their_own(monkeypatch, tmp_path):
    """The step split gives the NeRF systems' regularisers (Stable-Zero123's 3D normal smoothness is a second field
    pass) their own part instead of leaving them in 'other': each training step opens the section."""
    import contextlib
    from pathlib import Path

    import hash3d.systems.nerf as nerf
    from hash3d.config import load_config, smoke_overrides
    from hash3d.launch import main

    opened: list[str] = []

    @contextlib.contextmanager
    def recording(name):
        opened.append(name)
        yield

    monkeypatch.setattr(nerf, "section", recording)
    front = Path(__file__).resolve().parents[1] / "threestudio-hash3d"
    monkeypatch.chdir(front)
    config = front / "configs" / "stable-zero123-mini_hash3d.yaml"
    args = [*smoke_overrides(load_config(config)[0], steps=2, size=32, test_views=1), f"exp_root_dir={tmp_path}",
            "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.renderer.num_samples_per_ray=32"]
    assert main(["--config", str(config), "--train", *args]) == 0
    # two steps, each with its SDS views and its reference view
    assert opened == ["regularisers"] * 4
