"""The parts the two mini trainers share (`hash3d.mini.train_loop`): step loop, compile fallback, EMA, lr, v targets,
and both command lines; plus the exactness of each trainer (the same seed gives bit-identical weights)."""

from __future__ import annotations

import math

import pytest
import torch

from hash3d.mini.train_loop import (
    EMA,
    REFRESH_EVERY,
    CheckedUNet,
    cosine_lr,
    noised_v,
    run_steps,
)


def _loop(n_steps, losses=None, log_every_s=math.inf, checkpoint_every_s=math.inf):
    progress = {"n": 0, "s": 0.0}
    calls = {"steps": [], "refresh": [], "reports": [], "checkpoints": 0}

    def step(i):
        calls["steps"].append(i)
        return torch.tensor(losses[i] if losses else float(i))

    def checkpoint():
        calls["checkpoints"] += 1

    run_steps(progress, ("n", "s"), step=step, refresh=lambda: calls["refresh"].append(progress["n"]),
              stop=lambda: progress["n"] >= n_steps, log_due=lambda: progress["n"] >= n_steps,
              report=lambda loss, rate, steps: calls["reports"].append((loss, steps)), log_every_s=log_every_s,
              device=torch.device("cpu"), name="test", checkpoint=checkpoint, checkpoint_every_s=checkpoint_every_s)
    return progress, calls


def test_run_steps_counts_refreshes_and_reports_the_interval_mean():
    progress, calls = _loop(19)
    assert calls["steps"] == list(range(19)) and progress["n"] == 19 and progress["s"] > 0
    assert calls["refresh"] == list(range(0, 19, REFRESH_EVERY))
    assert calls["reports"] == [(sum(range(19)) / 19, 19)]  # one interval: the mean of all its losses
    assert calls["checkpoints"] == 0
    # logging every step: each report is that step's loss; a zero checkpoint interval saves after every step
    _, calls = _loop(3, log_every_s=0.0, checkpoint_every_s=0.0)
    assert calls["reports"] == [(0.0, 1), (1.0, 2), (2.0, 3)] and calls["checkpoints"] == 3
    # resuming: counting goes on from the stored step, refreshes stay on multiples of REFRESH_EVERY
    progress = {"n": 6, "s": 1.0}
    seen = []
    run_steps(progress, ("n", "s"), step=lambda i: torch.tensor(1.0), refresh=lambda: seen.append(progress["n"]),
              stop=lambda: progress["n"] >= 10, log_due=lambda: False, report=lambda *a: None, log_every_s=math.inf,
              device=torch.device("cpu"))
    assert seen == [8] and progress["n"] == 10 and progress["s"] > 1.0


def test_run_steps_stops_on_a_non_finite_loss():
    with pytest.raises(FloatingPointError, match="test loss is nan at step 2"):
        _loop(2, losses=[1.0, float("nan")])


def test_checked_unet_falls_back_to_eager_once_or_raises_when_asked_for():
    eager = torch.nn.Linear(2, 2)
    logged = []
    unet = CheckedUNet(eager, compile=False, fallback=True, log=logged.append)
    assert not unet.compiled and unet.first_step(lambda: torch.tensor(1.0)) == 1.0
    x = torch.ones(1, 2)
    torch.testing.assert_close(unet(x), eager(x))

    def broken(*args):
        raise RuntimeError("inductor exploded\nmore lines")

    unet.fn, unet.checked = broken, False  # as if torch.compile had returned it
    assert unet.compiled
    tries = []

    def step():
        tries.append(unet.fn)
        return unet(x).sum()

    unet.first_step(step)
    assert tries == [broken, eager] and not unet.compiled and unet.checked
    assert logged == ["torch.compile of the UNet failed (RuntimeError: inductor exploded); training eagerly"]
    unet.first_step(step)
    assert tries == [broken, eager, eager]
    strict = CheckedUNet(eager, compile=False, fallback=False, log=logged.append)
    strict.fn, strict.checked = broken, False
    with pytest.raises(RuntimeError, match="inductor exploded"):
        strict.first_step(lambda: strict(x))
    assert strict.compiled and not strict.checked and len(logged) == 1


def test_ema_warms_up_and_copies_into_other_weights():
    p = torch.zeros(3)
    ema = EMA([p], decay=0.9)
    p += 1.0
    ema.update([p], step=0)  # decay min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.9))
    ema.update([p], step=100)  # decay 0.9
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.9 * 0.9 + 0.1))
    target = torch.zeros(3, dtype=torch.float16)
    ema.copy_to([target])
    assert target.dtype == torch.float16 and torch.equal(target, ema.shadow[0].half())
    other = EMA([torch.zeros(3)], 0.9)
    other.load(ema.state())
    assert torch.equal(other.shadow[0], ema.shadow[0])


def test_cosine_lr_and_v_targets_match_their_formulas():
    assert cosine_lr(1.0, 0, 4, 0.0) == pytest.approx(0.25)
    assert cosine_lr(1.0, 9, 4, 0.5) == pytest.approx(0.55)
    assert cosine_lr(2.0, 9, 4, 1.0) == pytest.approx(0.2) == cosine_lr(2.0, 9, 4, 3.0)
    alphas = torch.linspace(0.99, 0.01, 1000)
    x0 = torch.randn(5, 4, 8, 8)
    x_t, t, v = noised_v(x0, alphas, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(t, torch.randint(0, 1000, (5,), generator=g))
    noise = torch.randn(x0.shape, generator=g)
    ab = alphas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0, rtol=1e-5, atol=1e-5)  # v inverts to x0


def test_both_command_lines_take_their_flags():
    from hash3d.mini import train, train_sd

    common = ["--out", "o", "--minutes", "3", "--steps", "5", "--batch", "2", "--lr", "0.1", "--pool-objects", "16",
              "--refresh", "3", "--device", "cpu", "--seed", "7", "--eval-objects", "9", "--model-dir", "m",
              "--export-parts", "e"]
    expected = dict(out="o", minutes=3.0, steps=5, batch=2, lr=0.1, pool_objects=16, refresh=3, device="cpu", seed=7,
                    eval_objects=9, model_dir="m", export_parts="e")
    z = train.parse_args(common + ["--session-minutes", "2", "--vae-steps", "1", "--vae-minutes", "0.5",
                                   "--pool-views", "4", "--compile-render", "on", "--compile-unet", "off"])
    assert {k: getattr(z, k) for k in expected} == expected
    assert (z.session_minutes, z.vae_steps, z.vae_minutes, z.pool_views, z.compile_render, z.compile_unet, z.tiny) \
        == (2.0, 1, 0.5, 4, "on", "off", False)
    s = train_sd.parse_args(common + ["--deadline-minutes", "4", "--compile", "--vae-dir", "v"])
    assert {k: getattr(s, k) for k in expected} == expected
    assert (s.deadline_minutes, s.compile_unet, s.vae_dir) == (4.0, True, "v")
    # defaults, and --tiny under explicit flags
    assert train.parse_args(["--out", "o"]) == train.TrainConfig(out="o")
    assert train_sd.parse_args(["--out", "o"]) == train_sd.SDTrainConfig(out="o")
    tiny = train_sd.parse_args(["--out", "o", "--tiny", "--batch", "3"])
    assert tiny == train_sd.SDTrainConfig(**{**train_sd.TINY_SD, "out": "o", "batch": 3})
    assert train.parse_args(["--out", "o", "--tiny"]) == train.TrainConfig(**{**train.TINY, "out": "o", "tiny": True})
    for flag in ("--compile", "--deadline-minutes"):
        with pytest.raises(SystemExit):
            train.parse_args(["--out", "o", flag, "1"] if flag != "--compile" else ["--out", "o", flag])
