"""hash3d.profiling: named GPU sections for the benchmarks, free when no timer is active; the kernel profile's
attribution of ops and kernels to sections."""

from __future__ import annotations

import time

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from hash3d.profiling import (
    KernelRow,
    SectionTimer,
    active,
    attribute,
    kernel_profile,
    paused,
    section,
    section_span,
    step_done,
    time_backward,
    timed,
)


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

    import hash3d.profiling as profiling
    from hash3d.config import load_config, smoke_overrides
    from hash3d.launch import main

    opened: list[str] = []

    @contextlib.contextmanager
    def recording(name):
        opened.append(name)
        yield

    monkeypatch.setattr(profiling, "section", recording)  # what `timed` opens (the loop's sections bound it at import)
    front = Path(__file__).resolve().parents[1] / "threestudio-hash3d"
    monkeypatch.chdir(front)
    config = front / "configs" / "stable-zero123-mini_hash3d.yaml"
    args = [*smoke_overrides(load_config(config)[0], steps=2, size=32, test_views=1), f"exp_root_dir={tmp_path}",
            "system.geometry.pos_encoding_config.log2_hashmap_size=12", "system.renderer.num_samples_per_ray=32"]
    assert main(["--config", str(config), "--train", *args]) == 0
    # two steps, each with its SDS views and its reference view
    assert [name for name in opened if name == "regularisers"] == ["regularisers"] * 4


def _toy_step():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with section("a"):
        y = x @ w
    with section("b"):
        z = y.sigmoid()
    z.sum().backward()


def test_kernel_profile_attributes_ops_to_their_sections_and_the_backward_pass():
    with kernel_profile() as kp:
        _toy_step()
    with section("after"):  # the profile is over: no range, no name
        pass
    assert kp.sections == {"a", "b"}
    result = attribute(kp.profiler.events(), kp.sections, device_time=False)
    where = {}
    for row in result.rows:
        where.setdefault(row.name, set()).add(row.section)
    assert where["aten::mm"] == {"a", "backward"}  # the forward matmul, and MmBackward0's mm
    assert where["aten::sigmoid"] == {"b"}
    assert where["aten::sigmoid_backward"] == {"backward"}
    assert {r.section for r in result.rows if "Backward" in r.name} == {"backward"}
    assert "a" not in where and "b" not in where  # a range's own event is not an op
    assert all(row.calls >= 1 and row.ms >= 0 for row in result.rows)
    assert [r.ms for r in result.rows] == sorted((r.ms for r in result.rows), reverse=True)
    for name, total in result.totals_ms.items():
        assert total == pytest.approx(sum(r.ms for r in result.rows if r.section == name))
    assert list(result.totals_ms.values()) == sorted(result.totals_ms.values(), reverse=True)
    # a window around the sections leaves out the backward pass, which ran after them
    window = section_span(kp.profiler.events(), kp.sections)
    inside = attribute(kp.profiler.events(), kp.sections, device_time=False, window=window)
    assert {r.section for r in inside.rows} <= {"a", "b"} and {"a", "b"} <= set(inside.totals_ms)


def test_sections_open_no_profiler_range_without_a_timer_or_kernel_profile():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _toy_step()
    names = {e.name for e in prof.events()}
    assert "aten::mm" in names and not names & {"a", "b"}


def _event(id, name, start, end, parent=None, device=DeviceType.CPU, linked=0, activity=None):
    event = FunctionEvent(id, name, thread=1, start_us=start, end_us=end, device_type=device,
                          linked_correlation_id=linked, activity_type=activity, use_device="cuda")
    if parent is not None:
        event.set_cpu_parent(parent)
        parent.append_cpu_child(event)
    return event


def test_device_time_goes_to_the_section_of_the_launching_op_or_the_range_open_at_launch():
    """Made-up CUDA events (no GPU needed): a kernel linked to its op counts under the op's section; one launched
    outside any op (a graph replay) through its runtime call's time; a backward op's on the engine's thread under
    "backward"; the ranges' own device events (GPU user annotations) not at all."""
    unet = _event(1, "unet", 0, 100, activity="user_annotation")
    render = _event(2, "render", 100, 200, activity="user_annotation")
    conv = _event(3, "aten::conv2d", 10, 20, parent=unet, activity="cpu_op")
    replay = _event(7, "cudaGraphLaunch", 30, 31, activity="cuda_runtime")  # unlinked: no op around it
    engine = _event(4, "autograd::engine::evaluate_function: MmBackward0", 300, 310, activity="cpu_op")
    mm = _event(5, "aten::mm", 301, 309, parent=engine, activity="cpu_op")
    cuda = DeviceType.CUDA
    events = [unet, render, conv, replay, engine, mm,
              _event(40, "conv_kernel", 50, 53, device=cuda, linked=3, activity="kernel"),
              _event(41, "conv_kernel", 53, 54, device=cuda, linked=3, activity="kernel"),
              _event(7, "graph_kernel", 60, 62, device=cuda, activity="kernel"),
              _event(42, "gemm", 320, 330, device=cuda, linked=5, activity="kernel"),
              _event(43, "unet", 50, 150, device=cuda, activity="gpu_user_annotation")]
    marker = _event(44, "ProfilerStep#3", 0, 300, device=cuda)  # a scheduled profile's device step marker
    del marker.linked_correlation_id, marker.activity_type
    marker.is_user_annotation = True
    # the links are read whichever device event comes first, the marker that carries none included
    assert attribute([marker, *events], {"unet", "render"}, device_time=True).rows[:2] == [
        KernelRow("backward", "gemm", 1, 0.010, "aten::mm"), KernelRow("unet", "conv_kernel", 2, 0.004, "aten::conv2d")]
    result = attribute(events, {"unet", "render"}, device_time=True)
    assert result.rows == [KernelRow("backward", "gemm", 1, 0.010, "aten::mm"),
                           KernelRow("unet", "conv_kernel", 2, 0.004, "aten::conv2d"),
                           KernelRow("unet", "graph_kernel", 1, 0.002, "cudaGraphLaunch")]
    assert result.totals_ms == {"backward": 0.010, "unet": pytest.approx(0.006)}
    # kernels count where they were launched, not where they ran: the window is over launch times
    assert attribute(events, {"unet", "render"}, device_time=True, window=(0, 200)).totals_ms == {
        "unet": pytest.approx(0.006)}


def test_without_event_links_device_time_goes_to_the_section_of_the_op_torch_attached_it_to():
    """Torch versions whose events carry no `linked_correlation_id` (2.11): each CPU op holds its kernels
    (`kernels`), which count under the op's section; a device event attached to no op (a graph replay) counts under
    "other"; the ranges' own device events not at all."""
    unet = _event(1, "unet", 0, 100)
    conv = _event(3, "aten::conv2d", 10, 20, parent=unet)
    engine = _event(4, "autograd::engine::evaluate_function: MmBackward0", 300, 310)
    mm = _event(5, "aten::mm", 301, 309, parent=engine)
    cuda = DeviceType.CUDA
    device = [_event(40, "conv_kernel", 50, 53, device=cuda), _event(41, "conv_kernel", 53, 54, device=cuda),
              _event(42, "graph_kernel", 60, 62, device=cuda), _event(43, "gemm", 320, 330, device=cuda),
              _event(44, "unet", 50, 150, device=cuda)]
    conv.append_kernel("conv_kernel", 0, 3.0)
    conv.append_kernel("conv_kernel", 0, 1.0)
    mm.append_kernel("gemm", 0, 10.0)
    events = [unet, conv, engine, mm, *device]
    for event in events:  # as torch 2.11 builds them
        del event.linked_correlation_id, event.activity_type
    result = attribute(events, {"unet"}, device_time=True)
    assert result.rows == [KernelRow("backward", "gemm", 1, 0.010, "aten::mm"),
                           KernelRow("unet", "conv_kernel", 2, 0.004, "aten::conv2d"),
                           KernelRow("other", "graph_kernel", 1, 0.002)]
    # attached kernels count at their op's (launch) time, the unattached one at its device start
    assert attribute(events, {"unet"}, device_time=True, window=(0, 55)).totals_ms == {"unet": pytest.approx(0.004)}


def test_one_kernel_launched_by_two_ops_gets_a_row_for_each():
    """An elementwise kernel serves many ops: each launching op gets its own row, so a profile says which op to cut."""
    render = _event(1, "render", 0, 100, activity="user_annotation")
    index = _event(2, "aten::index", 10, 20, parent=render, activity="cpu_op")
    copy = _event(3, "aten::copy_", 30, 40, parent=render, activity="cpu_op")
    cuda = DeviceType.CUDA
    events = [render, index, copy,
              _event(40, "elementwise_kernel", 50, 58, device=cuda, linked=2, activity="kernel"),
              _event(41, "elementwise_kernel", 60, 62, device=cuda, linked=3, activity="kernel"),
              _event(42, "elementwise_kernel", 62, 64, device=cuda, linked=3, activity="kernel")]
    result = attribute(events, {"render"}, device_time=True)
    assert result.rows == [KernelRow("render", "elementwise_kernel", 1, 0.008, "aten::index"),
                           KernelRow("render", "elementwise_kernel", 2, 0.004, "aten::copy_")]
    assert result.totals_ms == {"render": pytest.approx(0.012)}


def _fit_dummy(tmp_path, steps: int, sanity_steps: int = 0, test_step=None) -> None:
    """The real training loop (`Trainer.fit`) on the dummy system: `steps` CPU steps, after `sanity_steps` views of
    the sanity-check validation (rendered by `test_step` if given)."""
    import hash3d.testing.dummy_system  # noqa: F401 - registers 'dummy-system'
    from hash3d.config import build, load_config
    from hash3d.training import Trainer, TrialDir

    cfg, _ = load_config(None, ["data_type=random-camera-datamodule", "system_type=dummy-system",
                                f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
                                f"trainer.num_sanity_val_steps={sanity_steps}", "trainer.val_check_interval=0"])  # fmt: skip
    datamodule = build("data", cfg.data_type, cfg.data, seed=0)
    system = build("system", cfg.system_type, cfg.system, device="cpu")
    if test_step is not None:
        system.test_step = test_step.__get__(system)
    Trainer(cfg, TrialDir(tmp_path / "trial"), torch.device("cpu")).fit(system, datamodule)


def test_the_sanity_check_validation_opens_no_section_of_a_profile_or_timer(tmp_path):
    """The sanity-check renders come before the training clock starts, so the sections they open are left out of
    the step sections too; paused() restores the profile after."""
    from hash3d.testing.dummy_system import DummySystem

    rendered = []

    def test_step(self, batch, index):
        with section("val-render"):
            rendered.append(index)
            return DummySystem.test_step(self, batch, index)

    with kernel_profile() as kp:
        _fit_dummy(tmp_path, steps=2, sanity_steps=1, test_step=test_step)
        with section("after"):
            pass
    assert rendered and "val-render" not in kp.sections
    assert {"forward", "after"} <= kp.sections  # the steps' sections, and sections after the pause, still count
    with kernel_profile() as kp:
        with paused():
            with section("inside"):
                pass
        with section("outside"):
            pass
    assert kp.sections == {"outside"}


@pytest.mark.parametrize("skip", [0, 3, 5])
def test_kernel_profile_records_only_the_training_steps_after_the_skipped_ones(tmp_path, skip):
    """Each step of the loop opens a "data" and a "forward" section once: the recorded ranges count the recorded
    steps, and the profiler's step markers number them from the first step after the skipped ones."""
    with kernel_profile(skip_steps=skip) as kp:
        _fit_dummy(tmp_path, steps=5)
    assert kp.steps_done == 5 and kp.recorded_steps == 5 - skip
    if skip == 5:  # nothing left to record
        with pytest.raises(ValueError, match="no training step was recorded"):
            kp.recorded_ms()
        return
    names = [e.name for e in kp.profiler.events()]
    assert names.count("data") == names.count("forward") == 5 - skip
    assert names.count("ProfilerStep*") == 5 - skip + 1  # one a step, and the stretch after the last until the end
    assert kp.recorded_ms() > 0


def test_recorded_time_spans_the_steps_after_the_skipped_ones():
    """Slow skipped steps, quick recorded ones: the recorded span lies between what the host measured from around
    the end of the last skipped step to around the end of the last recorded one."""
    w = torch.randn(32, 32)
    around: list[tuple[float, float]] = []  # host clock just before and just after each step_done
    with kernel_profile(skip_steps=2) as kp:
        for i in range(5):
            with section("data"):
                w @ w
            time.sleep(0.2 if i < 2 else 0.01)
            before = time.perf_counter()
            step_done()
            around.append((before, time.perf_counter()))
    span_ms = kp.recorded_ms()
    assert 1000 * (around[-1][0] - around[1][1]) <= span_ms <= 1000 * (around[-1][1] - around[1][0])
    assert span_ms < 200  # neither skipped step's sleep is in it
    assert sum(e.name == "data" for e in kp.profiler.events()) == 3



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_skipped_steps_launch_no_recorded_kernels_and_the_span_is_the_devices():
    """On CUDA: the recorded steps' kernels only (the skipped steps launch four times as many), and the span measured
    by CUDA events lies within the host's clock around the step ends (the GPU idle at each, so each end's event runs
    while its `step_done` does)."""
    x = torch.randn(1024, 1024, device="cuda")
    around = []
    with kernel_profile(skip_steps=3) as kp:
        for i in range(5):
            with section("work"):
                y = x
                for _ in range(8 if i < 3 else 2):
                    y = (y @ x).tanh()
            torch.cuda.synchronize()
            before = time.perf_counter()
            step_done()
            torch.cuda.synchronize()
            around.append((before, time.perf_counter()))
    events = kp.profiler.events()
    # no section window: a kernel the profiler did not link to its op is placed at its GPU start, which can fall
    # after the step's CPU range
    found = attribute(events, kp.sections, device_time=True)
    assert kp.recorded_steps == 2 and sum(e.name == "work" for e in events if e.device_type == DeviceType.CPU) == 2
    assert sum(r.calls for r in found.rows if "tanh" in r.name) == 2 * 2
    # every kernel was launched inside "work": attributed there whether or not this torch links events to ops
    assert found.totals_ms.get("work", 0.0) >= 0.9 * sum(found.totals_ms.values())
    assert 1000 * (around[4][0] - around[2][1]) <= kp.recorded_ms() <= 1000 * (around[4][1] - around[2][0])


def test_step_done_is_a_no_op_without_a_kernel_profile():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step_done()
        _toy_step()
    assert not [e for e in prof.events() if e.name.startswith("ProfilerStep")]
    with kernel_profile() as kp:
        step_done()
    step_done()  # the profile is over: its count stays
    assert kp.steps_done == 1 and kp.recorded_steps == 1


def test_kernel_profile_refuses_a_negative_skip():
    with pytest.raises(ValueError, match="skip_steps must be >= 0, got -1"):
        with kernel_profile(skip_steps=-1):
            pass
    with section("after"):  # no profile was left active: sections stay free
        pass
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _toy_step()
    assert not {e.name for e in prof.events()} & {"a", "b"}
