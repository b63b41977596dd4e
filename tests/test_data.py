"""Data: milestone schedule, random camera statistics, evaluation orbits, reference-image loading and recentring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hash3d.config import ConfigError, from_data
from hash3d.data import (
    DataError,
    RandomCameraConfig,
    RandomCameraDataModule,
    RandomCameraSampler,
    SingleImageConfig,
    SingleImageDataModule,
    eval_batches,
    load_rgba,
    milestone_index,
    recenter,
    resize,
)
from hash3d.data.cameras import camera_position

IMAGES = Path(__file__).resolve().parents[1] / "threestudio-hash3d" / "load" / "images"


def test_milestone_index_switches_at_the_milestone():
    ms = [200, 300]
    assert [milestone_index(s, ms) for s in (0, 199, 200, 299, 300, 10_000)] == [0, 0, 1, 1, 2, 2]
    assert milestone_index(0, []) == milestone_index(5000, []) == 0


def test_sizes_follow_milestones():
    cfg = RandomCameraConfig(height=[64, 128, 256], width=[64, 128, 256], batch_size=[12, 8, 4], resolution_milestones=[200, 300])
    s = RandomCameraSampler(cfg, seed=0)
    for step, (b, h) in {0: (12, 64), 199: (12, 64), 200: (8, 128), 300: (4, 256)}.items():
        batch = s.sample(step)
        assert (batch.batch_size, batch.height, batch.width) == (b, h, h)
        assert batch.c2w.shape == (b, 4, 4) and batch.light_positions.shape == (b, 3)
    with pytest.raises(ConfigError, match="batch_size has 2 entries but resolution_milestones"):
        from_data(RandomCameraConfig, {"batch_size": [1, 2], "resolution_milestones": [1, 2]}, "data")


def test_random_camera_statistics():
    cfg = RandomCameraConfig(batch_size=64, elevation_range=(-10.0, 90.0), batch_uniform_azimuth=False,
                             camera_distance_range=(1.0, 1.5), fovy_range=(40.0, 70.0), light_distance_range=(0.8, 1.5))
    s = RandomCameraSampler(cfg, seed=0)
    batches = [s.sample(0) for _ in range(600)]
    elev = torch.cat([b.elevation for b in batches])
    az = torch.cat([b.azimuth for b in batches])
    dist = torch.cat([b.camera_distances for b in batches])
    fovy = torch.cat([b.fovy for b in batches])
    light = torch.cat([b.light_positions for b in batches]).norm(dim=-1)
    assert elev.min() >= -10 and elev.max() <= 90
    # mixture of uniform-in-degrees (mean 40°, P(>60°) = 0.3) and uniform-on-sphere (mean 27.1°, P(>60°) = 0.114)
    sphere_mean = math.degrees(((math.pi / 2) - (-0.173648 * math.asin(-0.173648) + math.sqrt(1 - 0.173648**2))) / 1.173648)
    assert abs(sphere_mean - 27.13) < 0.05
    assert abs(elev.mean().item() - (40.0 + sphere_mean) / 2) < 1.5
    assert abs((elev > 60).float().mean().item() - (0.3 + 0.1142) / 2) < 0.02
    # batch-wide coin: within a batch all elevations come from one branch; both branches occur about half the time
    uniform_like = [(b.elevation > 60).float().mean().item() > 0.2 for b in batches]
    assert 0.35 < np.mean(uniform_like) < 0.65
    assert az.min() >= -180 and az.max() <= 180 and abs(az.mean().item()) < 3
    assert abs(az.std().item() - 360 / math.sqrt(12)) < 2
    assert dist.min() >= 1 and dist.max() <= 1.5 and abs(dist.mean().item() - 1.25) < 0.01
    assert fovy.min() >= 40 and fovy.max() <= 70 and abs(fovy.mean().item() - 55) < 0.5
    assert light.min() >= 0.8 - 1e-5 and light.max() <= 1.5 + 1e-5


def test_stratified_azimuth_and_unperturbed_geometry():
    cfg = RandomCameraConfig(batch_size=8, batch_uniform_azimuth=True, camera_perturb=0.0, center_perturb=0.0,
                             up_perturb=0.0, light_sample_strategy="camera")
    b = RandomCameraSampler(cfg, seed=1).sample(0)
    sector = torch.floor((b.azimuth + 180) / 360 * 8)
    assert torch.equal(sector, torch.arange(8, dtype=torch.float32))
    expected = camera_position(b.elevation, b.azimuth, b.camera_distances)
    torch.testing.assert_close(b.camera_positions, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.light_positions, expected, atol=1e-5, rtol=0)
    # the camera looks at the origin: its -z axis points from the camera to (0, 0, 0)
    to_origin = -expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(-b.c2w[:, :3, 2], to_origin, atol=1e-5, rtol=0)
    # and is upright: its x axis is horizontal
    assert b.c2w[:, 2, 0].abs().max() < 1e-5


def test_perturbations_move_cameras_off_the_sphere():
    cfg = RandomCameraConfig(batch_size=256, camera_perturb=0.1, center_perturb=0.0, up_perturb=0.0)
    b = RandomCameraSampler(cfg, seed=0).sample(0)
    delta = b.camera_positions - camera_position(b.elevation, b.azimuth, b.camera_distances)
    assert delta.abs().max() <= 0.1 + 1e-5 and delta.abs().max() > 0.09
    assert abs(delta.std().item() - 0.2 / math.sqrt(12)) < 0.01


def test_sampler_is_seeded_and_resumable():
    cfg = RandomCameraConfig(batch_size=4)
    a, b = RandomCameraSampler(cfg, seed=5), RandomCameraSampler(cfg, seed=5)
    assert torch.equal(a.sample(0).c2w, b.sample(0).c2w)
    assert not torch.equal(RandomCameraSampler(cfg, seed=6).sample(0).c2w, a.sample(0).c2w)
    state = a.state_dict()
    nxt = a.sample(3)
    c = RandomCameraSampler(cfg, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.sample(3).c2w, nxt.c2w)
    assert RandomCameraSampler(RandomCameraConfig(batch_size=4, seed=5), seed=0).sample(0).elevation.equal(
        RandomCameraSampler(cfg, seed=5).sample(0).elevation
    )


def test_progressive_ranges():
    cfg = RandomCameraConfig(progressive_until=99, eval_elevation_deg=15.0, elevation_range=(-10.0, 80.0))
    s = RandomCameraSampler(cfg)
    assert s.ranges(0) == ((15.0, 15.0), (0.0, 0.0))
    (e0, e1), (a0, a1) = s.ranges(50)
    assert e0 == pytest.approx(15 + 0.5 * (-25)) and a1 == pytest.approx(90.0)
    assert s.ranges(100) == ((-10.0, 80.0), (-180.0, 180.0))


def test_eval_orbits():
    cfg = RandomCameraConfig(n_val_views=4, n_test_views=120, eval_height=16, eval_width=24, eval_elevation_deg=5.0,
                             eval_camera_distance=3.8, eval_fovy_deg=20.0, eval_batch_size=1)
    test = list(eval_batches(cfg, "test"))
    assert len(test) == 120
    az = torch.cat([b.azimuth for b in test])
    assert az[0] == 0 and az[-1] == 360 and torch.allclose(az[1] - az[0], torch.tensor(360 / 119))
    assert [int(b.index) for b in test] == list(range(120))
    assert all(b.height == 16 and b.width == 24 for b in test)
    assert torch.cat([b.elevation for b in test]).eq(5.0).all() and torch.cat([b.fovy for b in test]).eq(20.0).all()
    torch.testing.assert_close(test[0].light_positions, test[0].camera_positions)
    val = list(eval_batches(cfg, "val"))
    assert torch.cat([b.azimuth for b in val]).tolist() == [0.0, 90.0, 180.0, 270.0]
    dm = RandomCameraDataModule(RandomCameraConfig(n_test_views=5, eval_batch_size=2))
    assert [b.batch_size for b in dm.test_batches()] == [2, 2, 1] and dm.num_test_views() == 5


# ---------------------------------------------------------------- reference image
def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _rgba(h=64, w=64, box=(10, 30, 20, 40), colour=(255, 0, 0)) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1, :3] = colour
    img[y0:y1, x0:x1, 3] = 255
    return img


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="image not found"):
        load_rgba(tmp_path / "none.png")
    with pytest.raises(DataError, match="is a folder"):
        load_rgba(tmp_path)
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read image .*junk.png"):
        load_rgba(tmp_path / "junk.png")
    rgb = _save(tmp_path / "rgb.png", _rgba()[..., :3])
    with pytest.raises(DataError, match=r"has no alpha channel \(mode RGB\).*RGBA image.*rembg") as err:
        load_rgba(rgb)
    assert "rembg i input.png" in str(err.value)
    with pytest.raises(DataError, match=r"no alpha channel \(mode L\)"):
        load_rgba(_save(tmp_path / "grey.png", _rgba()[..., 0]))
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    with pytest.raises(DataError, match="unsupported pixel mode 'I.*8-bit RGBA"):
        load_rgba(tmp_path / "deep.png")
    opaque = _rgba()
    opaque[..., 3] = 255
    with pytest.raises(DataError, match="fully opaque.*rembg"):
        load_rgba(_save(tmp_path / "opaque.png", opaque))
    with pytest.raises(DataError, match="fully transparent"):
        load_rgba(_save(tmp_path / "empty.png", np.zeros((8, 8, 4), np.uint8)))
    # a palette image with a transparent colour and an LA image are fine
    pal = Image.fromarray(_rgba()).convert("RGBA").quantize(4)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=int(np.asarray(pal)[0, 0]))
    assert load_rgba(tmp_path / "pal.png").shape == (64, 64, 4)
    la = _rgba()[..., [0, 3]]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert load_rgba(tmp_path / "la.png")[..., 3].max() == 1.0


def test_resize_area_and_premultiplied():
    img = torch.zeros(4, 4, 4)
    img[:2, :2] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # opaque red block
    img[2:, 2:] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # invisible blue: must not bleed
    img[0, 2] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    out = resize(img, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 1.0, 0.0, 0.25]))  # colour of the visible pixel only
    torch.testing.assert_close(out[1, 1], torch.zeros(4))


def test_recenter_exact_square_and_rectangle():
    img = torch.from_numpy(_rgba(64, 64, (10, 30, 20, 40)).astype(np.float32) / 255)  # 20x20 red square
    out = recenter(img, border_ratio=0.5)
    assert out.shape == (64, 64, 4)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[16:48, 16:48] = True  # 32 = 64 * (1 - 0.5) pixels, centred
    torch.testing.assert_close(out[..., 3][inside], torch.ones(32 * 32), atol=1e-6, rtol=0)
    assert out[..., 3][~inside].abs().max() == 0
    torch.testing.assert_close(out[inside][:, :3], torch.tensor([1.0, 0.0, 0.0]).expand(32 * 32, 3), atol=1e-6, rtol=0)
    # a 40x20 (tall) rectangle in a 100x80 image: longer side -> round(100 * 0.8) = 80, so 80x40 at (10, 30)
    img = torch.from_numpy(_rgba(100, 80, (5, 45, 50, 70), (0, 255, 0)).astype(np.float32) / 255)
    out = recenter(img, border_ratio=0.2)
    assert out.shape == (100, 100, 4)
    ys, xs = torch.nonzero(out[..., 3] > 0, as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (10, 89, 30, 69)
    torch.testing.assert_close(out[10:90, 30:70], torch.tensor([0.0, 1.0, 0.0, 1.0]).expand(80, 40, 4), atol=1e-6, rtol=0)


def test_single_image_module(tmp_path):
    path = _save(tmp_path / "obj_rgba.png", _rgba(64, 64, (10, 30, 20, 40)))
    depth = np.zeros((64, 64), np.uint8)
    depth[10:30, 20:40] = 200
    _save(tmp_path / "obj_depth.png", depth)
    cfg = SingleImageConfig(image_path=str(path), height=[16, 32], width=[16, 32], resolution_milestones=[100],
                            default_elevation_deg=5.0, default_azimuth_deg=0.0, default_camera_distance=3.8,
                            default_fovy_deg=20.0, border_ratio=0.5, requires_depth=True,
                            random_camera=RandomCameraConfig(batch_size=3, height=8, width=8))
    dm = SingleImageDataModule(cfg, seed=0)
    dm.setup()
    b0, b1 = dm.train_batch(99), dm.train_batch(100)
    assert b0.ref.rgb.shape == (1, 16, 16, 3) and b1.ref.rgb.shape == (1, 32, 32, 3)
    expected = torch.zeros(1, 32, 32, 1, dtype=torch.bool)
    expected[:, 8:24, 8:24] = True  # recentred square, 32 of 64 px, then halved
    assert torch.equal(b1.ref.mask, expected)
    torch.testing.assert_close(b1.ref.depth[expected], torch.full((256,), 200 / 255), atol=1e-6, rtol=0)
    torch.testing.assert_close(b1.ref.camera_positions, camera_position(torch.tensor([5.0]), torch.tensor([0.0]),
                                                                         torch.tensor([3.8])))
    assert b1.ref.fovy.item() == 20.0 and b1.ref.ray_jitter == 2e-3
    o, d = b1.ref.rays(jitter=0.0)
    assert o.shape == d.shape == (1, 32, 32, 3)
    centre = d[0, 15:17, 15:17].mean((0, 1))
    torch.testing.assert_close(centre / centre.norm(), -b1.ref.camera_positions[0] / 3.8, atol=1e-3, rtol=0)
    assert b0.random.batch_size == 3 and b0.random.height == 8
    assert dm.reference_image.shape == (64, 64, 4)
    moved = b1.to("cpu")
    assert moved.ref.height == 32 and moved.random is not None
    # missing companion depth map
    cfg.image_path = str(_save(tmp_path / "other_rgba.png", _rgba()))
    with pytest.raises(DataError, match="depth map not found: .*other_depth.png"):
        SingleImageDataModule(cfg).setup()
    with pytest.raises(DataError, match="data.image_path: image not found"):
        SingleImageDataModule(SingleImageConfig(image_path=str(tmp_path / "x.png"))).setup()


def test_example_images():
    names = sorted(p.name for p in IMAGES.glob("*_rgba.png"))
    assert "dog1_rgba.png" in names and len(names) >= 3
    for name in names:
        path = IMAGES / name
        assert path.stat().st_size < 100_000
        rgba = load_rgba(path)
        assert rgba.shape[-1] == 4 and 0.05 < (rgba[..., 3] > 0.5).float().mean() < 0.8


def test_view_matrices_stay_fp32_under_autocast():
    """Mixed precision (trainer.precision=16-mixed) must not turn the camera maths into half precision: the inverse
    needs fp32 and the flip is exact."""
    from hash3d.data.cameras import opengl_to_opencv, world_to_camera_opencv

    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0.0, 3.0], [1.0, 2.0, -2.5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        viewmats = world_to_camera_opencv(c2w)
        flipped = opengl_to_opencv(c2w)
    assert viewmats.dtype == torch.float32 and flipped.dtype == torch.float32
    expected = torch.linalg.inv(c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])))
    torch.testing.assert_close(viewmats, expected)
