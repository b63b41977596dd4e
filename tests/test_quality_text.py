"""The text quality harness (`hash3d.text_to_3d`, `bench/quality.py --task text`) and its CI case: does a text-to-3D
pipeline with the shipped Hash3D-mini-sd make the described object, and does the Hash3D cache keep that?

CI case: held-out object 10**12 + 2056 ("a pink sphere"), a short DreamGaussian text stage 1 (CI_OPTIONS: 60 steps,
500 Gaussians, no mesh / video), cache off, cache on (CI_VARIANT: deep-feature reuse, every call tries the cache, on
cells of 60° elevation, 90° azimuth, radius 1 and 200 timesteps, so that about half the calls hit in 60 steps) and
the random-weight twin of the model, 8 views at elevation 30° scored against the described object's renders. It
fails when cache off is not at least MIN_MARGIN_DB above the random twin (and closer to the described colour), or
when cache on falls more than 0.5 dB below cache off.

Measured on this CPU (torch 2.13, one thread, another job on the second core), the same runs as this test with 16
views (`python bench/quality.py --task text --id-offset 2056 --variants off,features@1 --threads 1 iters=60
num_pts=500 position_lr_max_steps=60 "cache.cell_size=[60,90,1,200]"`; the stage-1 mesh options of CI_OPTIONS
change no score):

    model            cache        PSNR   IoU    colour err   hit rate
    mini-sd          off          13.60  0.929  0.330         0
    mini-sd          features@1   13.37  0.924  0.316        48.3%
    random weights   off          11.12  0.867  0.561         0
"""

from __future__ import annotations

import json

import pytest
import torch

from hash3d.image_to_3d import Variant, parse_variant
from hash3d.mini.objects import HELD_OUT_ID_BASE, make_objects
from hash3d.mini.render import on_white, render
from hash3d.mini.text_data import captions
from hash3d.text_to_3d import TEXT_PIPELINES, TextHarnessConfig, make_text_case, run_text_harness, text_case_ids

CI_OBJECT_OFFSET = 2056
CI_OPTIONS = ["iters=60", "num_pts=500", "position_lr_max_steps=60", "cache.cell_size=[60,90,1,200]",
              "mesh_resolution=24", "texture_size=32"]  # the stage-1 mesh is not scored: keep its UV unwrap cheap
CI_VARIANT = "features@1"
MIN_MARGIN_DB = 1.0  # measured: 2.48 dB above the random twin
MAX_DROP_DB = 0.5


def test_text_cases_are_held_out_simple_captions_with_their_objects_orbit():
    ids = text_case_ids(3)
    assert all(i >= HELD_OUT_ID_BASE + 2000 for i in ids) and ids == sorted(ids)
    texts = captions(make_objects(torch.tensor(ids)))
    assert all(len(t.split()) == 3 for t in texts), texts  # "a <colour> <shape>"
    assert text_case_ids(2, simple=False) == [HELD_OUT_ID_BASE + 2000, HELD_OUT_ID_BASE + 2001]
    case = make_text_case(HELD_OUT_ID_BASE + CI_OBJECT_OFFSET, n_views=4)
    assert case.caption == "a pink sphere" and case.azimuths == [0.0, 90.0, 180.0, 270.0]
    obj = make_objects(torch.tensor([case.object_id]))
    again = on_white(render(obj, torch.tensor([30.0]), torch.tensor([90.0])))[0]
    assert case.gt.shape == (4, 3, 64, 64) and torch.allclose(case.gt[1], again, atol=1e-5)
    with pytest.raises(ValueError, match="n_objects >= 1"):
        text_case_ids(0)


def test_shape_and_colour_scores_on_synthetic_views():
    from hash3d.mini.caption_score import foreground_color_error, shape_and_color

    gt = torch.ones(2, 3, 8, 8)
    gt[:, :, 2:6, 2:6] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
    pred = torch.ones(2, 3, 8, 8)
    pred[0, :, 2:6, 2:4] = torch.tensor([0.2, 0.2, 0.8])[:, None, None]  # half the square, in blue
    scores = shape_and_color(pred, gt)
    expected_error = (torch.tensor([0.8, 0.2, 0.2]) - torch.tensor([0.2, 0.2, 0.8])).norm()
    empty_error = (torch.tensor([0.8, 0.2, 0.2]) - 1).norm()  # nothing rendered: the colour of white
    assert torch.allclose(foreground_color_error(pred, gt), torch.stack([expected_error, empty_error]))
    assert scores["iou"] == pytest.approx(0.25) and scores["color_error"] == pytest.approx(
        float(expected_error + empty_error) / 2)
    with pytest.raises(ValueError, match=r"\[V, 3, H, W\]"):
        shape_and_color(pred[:1], gt)


@pytest.mark.parametrize("name", sorted(TEXT_PIPELINES))
def test_text_mini_configs_follow_the_model_card_and_twins_differ_only_in_the_cache(name):
    from hash3d.config import load_config, twin_differences
    from hash3d.shipped import MINI_SD_MODEL

    pipeline = TEXT_PIPELINES[name]
    plain, hashed = pipeline.config(Variant(False)), pipeline.config(parse_variant("on"))
    assert hashed.name == plain.name.replace(".yaml", "_hash3d.yaml")
    if pipeline.front_end == "dreamgaussian":
        from hash3d.config import flatten
        from hash3d.config.typed import to_data
        from hash3d.systems.dreamgaussian import load_options

        a, b = load_options(plain), load_options(hashed)
        la, lb = flatten(to_data(a)), flatten(to_data(b))
        assert all(k.startswith("cache.") for k in set(la) | set(lb) if la.get(k) != lb.get(k))
        assert not a.cache.enabled and b.cache.enabled
        assert (a.radius, a.fovy, a.ref_size, a.invert_bg_prob) == (3.8, 20.0, 64, 0.0)
        assert set(a.render_resolutions) == {64} and a.mode == "text"
        guidance = a.guidance
    else:
        assert twin_differences(plain, hashed) == []
        a, _ = load_config(plain, [])
        b, _ = load_config(hashed, [])
        assert not a.system.guidance.cache.enabled and b.system.guidance.cache.enabled
        data = a.data
        assert data.camera_distance_range == (3.8, 3.8) and data.fovy_range == (20.0, 20.0)
        assert (data.eval_camera_distance, data.eval_fovy_deg, data.height, data.width) == (3.8, 20.0, 64, 64)
        assert data.elevation_range[0] >= -10
        guidance = a.system.guidance
    front_end = plain.resolve().parent.parent  # the configs' paths are relative to their front-end folder
    assert (front_end / guidance.pretrained_model_name_or_path).resolve() == MINI_SD_MODEL.resolve()
    assert guidance.local_files_only and guidance.dtype == "fp32"


def test_bench_cli_rejects_mixed_tasks(load_bench, capsys):
    quality = load_bench("quality")
    for argv, message in ((["--task", "text", "--pipeline", "threestudio"], "runs a text pipeline"),
                          (["--pipeline", "dreamfusion-sd"], "is a text pipeline: add --task text"),
                          (["--task", "text", "--refine"], "options of --task image"),
                          (["--all-captions"], "option of --task text")):
        with pytest.raises(SystemExit):
            quality.main(argv)
        assert message in capsys.readouterr().err, argv


def ci_result(out, variants: list[Variant], random_baseline: bool) -> dict:
    """The CI case's harness result for some of its runs (module level: the test runs one of them in a second
    process)."""
    return run_text_harness(TextHarnessConfig(
        out=out, pipeline="dreamgaussian", objects=1, id_offset=CI_OBJECT_OFFSET, n_views=8, variants=variants,
        random_baseline=random_baseline, overrides=CI_OPTIONS, progress=False,
    ))


@pytest.mark.slow
def test_ci_text_to_3d_beats_the_random_twin_and_the_cache_keeps_it(tmp_path, second_process):
    cached = second_process.submit(ci_result, tmp_path / "on", [parse_variant(CI_VARIANT)], False)
    result = ci_result(tmp_path / "off", [Variant(False)], True)  # cache off, then the random twin, beside it
    (off, floor), (on,) = result["rows"], cached.result()["rows"]
    assert [r["variant"] for r in (off, on, floor)] == ["off", CI_VARIANT, "off"] and floor["model"] == "random weights"
    assert result["settings"]["captions"] == ["a pink sphere"]
    assert off["unet_calls_saved"] == 0 and on["unet_calls_saved"] > 0 and on["hit_rate"] > 0.2
    table = json.dumps([{k: r[k] for k in ("model", "variant", "psnr", "iou", "color_error", "hit_rate")}
                        for r in (off, on, floor)])
    assert off["psnr"] >= floor["psnr"] + MIN_MARGIN_DB, f"not clearly above the random-weight twin: {table}"
    assert off["color_error"] < floor["color_error"] - 0.1, f"no closer to the described colour: {table}"
    assert on["psnr"] >= off["psnr"] - MAX_DROP_DB, f"the cache costs more than {MAX_DROP_DB} dB: {table}"


def test_harness_scores_a_launcher_pipeline_at_its_test_orbit(tmp_path):
    """The threestudio-style path (GaussianDreamer's launcher): its test orbit is rendered at the scored views and
    read back; two steps, two views, no random twin."""
    result = run_text_harness(TextHarnessConfig(
        out=tmp_path, pipeline="gaussiandreamer-sd", objects=1, id_offset=CI_OBJECT_OFFSET, n_views=2,
        variants=[Variant(False)], random_baseline=False, progress=False,
        overrides=["trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "system.init.sphere.num_points=200"],
    ))
    (row,) = result["rows"]
    (obj,) = row["per_object"]
    assert obj["caption"] == "a pink sphere" and row["unet_calls"] == 2
    pred = sorted((tmp_path / "runs" / "gaussiandreamer-sd" / "mini-sd" / "off" / "object2056" / "pred").glob("*.png"))
    assert len(pred) == 2 and 5 < row["psnr"] < 40 and 0 <= row["iou"] <= 1 and row["color_error"] >= 0
    test_frames = sorted(tmp_path.glob("runs/**/save/it2-test/*.png"))
    assert len(test_frames) == 3  # 0°, 180° and 360°: the first two are scored
    import numpy as np
    from PIL import Image

    frame = np.asarray(Image.open(test_frames[1]).convert("RGB"))  # 1.png: 180°, rgb | other panels
    assert frame.shape[0] == 64 and np.array_equal(np.asarray(Image.open(pred[1])), frame[:, :64])
