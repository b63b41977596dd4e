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
