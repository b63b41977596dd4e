"""The quality harness (`hash3d.image_to_3d`, `bench/quality.py`) and its CI case: does the Hash3D cache keep image-to-3D
quality with the shipped Hash3D-mini model?

CI case: held-out object 10**12 + 2000, a short DreamGaussian stage 1 (CI_OPTIONS: 200 steps, 1000 Gaussians, no
mesh / video / stage 2), cache off and cache on (CI_VARIANT: deep-feature reuse, every call tries the cache, on a
grid coarser than the shipped config's — cells of 30° elevation, 45° azimuth, 0.2 radius, 100 timesteps — so that
about a third of the calls hit in 200 steps), 16 views at elevation 30° scored against the ground truth. It fails
when cache-on PSNR falls more than 0.5 dB below cache off, or when either falls below PSNR_FLOOR, which the
random-weight twin of the model does not reach at the same settings.

Measured on this CPU (torch 2.13, one thread) with the model retrained on 2026-11-25 (third session),
`python bench/quality.py --threads 1 --no-mesh --variants off,features@1,noise@1 iters=200 num_pts=1000
position_lr_max_steps=200 "cache.cell_size=[30,45,0.2,100]"` (the same runs as this test; they are seeded, and
repeat to the last digit on the same machine):

    model            cache        PSNR   SSIM    hit rate
    mini (trained)   off          15.98  0.6065   0
    mini (trained)   features@1   15.63  0.6040  37.5% (75 of 200 UNet calls saved)
    mini (trained)   noise@1      15.66  0.5976  37.5%
    random weights   off          14.96  0.5586   0

So the floor sits between the random twin (14.96) and the trained model (15.63-15.98): PSNR_FLOOR = 15.3, 0.34 dB
above the one and 0.33 dB below the lowest cache-on run. (At the earlier 80 steps the retrained model was only
0.26 dB above its random twin: too short a run to tell them apart reliably.)
"""

from __future__ import annotations

import json

import pytest
import torch

from hash3d.mini.objects import HELD_OUT_ID_BASE, make_objects
from hash3d.mini.render import render
from hash3d.image_to_3d import HarnessConfig, Variant, default_variants, make_case, parse_variant, parse_variants, run_harness
from hash3d.image_to_3d.random_model import write_random_mini
from hash3d.image_to_3d.variants import AS_CONFIGURED

CI_OPTIONS = ["iters=200", "num_pts=1000", "position_lr_max_steps=200", "cache.cell_size=[30,45,0.2,100]",
              "mesh_resolution=24", "texture_size=32"]  # the stage-1 mesh is not scored: keep its UV unwrap cheap
CI_VARIANT = "features@1"
PSNR_FLOOR = 15.3  # random weights: 14.96; trained: 15.98 cache off, 15.63 cache on (see above)
MAX_DROP_DB = 0.5


def test_variant_names_round_trip_and_bad_names_fail():
    for name in ("off", "on", "features@0.1", "noise@1", "features+adaptive@0.3", "noise+adaptive@0.5", "noise@auto"):
        assert parse_variant(name).name == name
    assert parse_variant("on") is AS_CONFIGURED and AS_CONFIGURED.overrides() == ["cache.enabled=true"]
    v = parse_variant("noise+adaptive@0.5")
    assert v.overrides("system.guidance.cache") == [
        "system.guidance.cache.enabled=true", "system.guidance.cache.mode=noise",
        "system.guidance.cache.adaptive=true", "system.guidance.cache.policy.probability=0.5",
        "system.guidance.cache.policy.strategy=fixed",
    ]
    assert parse_variant("features@auto").overrides()[-2:] == ["cache.policy.probability=1", "cache.policy.strategy=auto"]
    names = [v.name for v in default_variants()]
    assert len(names) == 13 and names[0] == "off" and "features+adaptive@1" in names and "noise@0.1" in names
    assert [v.name for v in parse_variants("off,default,noise@1")] == names
    for bad in ("features", "features@0", "features@2", "deep@0.5", "noise+fast@1", "features@x"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_cases_are_held_out_and_views_follow_the_benchmark():
    with pytest.raises(ValueError, match="training object"):
        make_case(HELD_OUT_ID_BASE - 1)
    case = make_case(HELD_OUT_ID_BASE + 2000, n_views=4)
    assert case.input_rgba.shape == (4, 64, 64) and case.gt.shape == (4, 3, 64, 64)
    assert case.delta_azimuths == [0.0, 90.0, 180.0, 270.0] and case.eval_elevation == 30.0
    obj = make_objects(torch.tensor([case.object_id]))
    again = render(obj, torch.tensor([30.0]), torch.tensor([90.0]))[0]
    assert torch.allclose(case.gt[1], again[:3] * again[3:] + 1 - again[3:], atol=1e-5)
    alpha = case.input_rgba[3]
    assert 0.05 < float(alpha.mean()) < 0.6 and float(alpha[0].max()) == 0.0  # object in frame, border empty


def test_random_twin_has_the_mini_layout_and_fresh_weights(tmp_path):
    from hash3d.diffusion.loading import load_zero123
    from hash3d.shipped import MINI_MODEL

    path = write_random_mini(tmp_path / "random")
    random = load_zero123(str(path), torch.float32, "cpu", local_files_only=True)
    trained = load_zero123(str(MINI_MODEL), torch.float32, "cpu", local_files_only=True)
    for part in ("unet", "vae", "image_encoder", "cc_projection"):
        a, b = getattr(random, part).state_dict(), getattr(trained, part).state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(random.unet.conv_in.weight, trained.unet.conv_in.weight)
    assert random.scheduler.config.prediction_type == trained.scheduler.config.prediction_type == "v_prediction"


def ci_rows(out, variant: Variant) -> list[dict]:
    """The CI case's harness rows of one variant (module level: the test runs one of them in a second process)."""
    return run_harness(HarnessConfig(
        out=out, objects=1, variants=[variant], random_baseline=False, score_mesh=False, overrides=CI_OPTIONS,
        progress=False,
    ))["rows"]


@pytest.mark.slow
def test_ci_cache_keeps_quality_above_the_random_weight_floor(tmp_path, second_process):
    cached = second_process.submit(ci_rows, tmp_path / "on", parse_variant(CI_VARIANT))  # beside cache off, here
    rows = ci_rows(tmp_path / "off", Variant(False)) + cached.result()
    off, on = rows
    assert (off["variant"], on["variant"]) == ("off", CI_VARIANT)
    assert off["unet_calls_saved"] == 0 and on["unet_calls_saved"] > 0 and on["hit_rate"] > 0
    table = json.dumps([{k: r[k] for k in ("variant", "psnr", "ssim", "hit_rate", "train_time_s")} for r in rows])
    assert off["psnr"] >= PSNR_FLOOR and on["psnr"] >= PSNR_FLOOR, f"below the random-weight floor {PSNR_FLOOR}: {table}"
    assert on["psnr"] >= off["psnr"] - MAX_DROP_DB, f"the cache costs more than {MAX_DROP_DB} dB: {table}"
