"""Gaussian model (init, learning rates), .ply round trip read by a header parser written here, densify / prune
with the optimiser kept in step, and mesh extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv
from hash3d.scene.gaussian_density import DensifyState, GaussianDensifyStrategy, reset_opacities
from hash3d.scene.gaussian_mesh import GaussianField, GaussianMeshConfig, extract_gaussian_mesh
from hash3d.scene.isosurface import NoSurfaceError
from hash3d.scene.gaussian_ply import load_gaussian_ply, read_point_cloud_ply, write_point_cloud_ply
from hash3d.render.gaussian_raster import rasterize_splats
from hash3d.scene.gaussians import GaussianLRConfig, GaussianModel, knn_mean_sq_dist


def _random_model(n=50, sh_degree=1, seed=0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k1 = (sh_degree + 1) ** 2 - 1
    return GaussianModel(
        means=torch.randn(n, 3, generator=g) * 0.3,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k1, 3, generator=g),
        opacities=torch.randn(n, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g),
    )


# ------------------------------------------------------------------------------------------------ model


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(300, 3, generator=g)
    pts[10] = pts[11]  # a duplicate counts as a neighbour at distance 0
    d2 = torch.cdist(pts.double(), pts.double()).square()
    d2.fill_diagonal_(float("inf"))
    want = d2.topk(3, largest=False).values.mean(1).float()
    torch.testing.assert_close(knn_mean_sq_dist(pts, 3), want)
    torch.testing.assert_close(knn_mean_sq_dist(pts, 3, max_chunk_elements=1000), want)
    assert float(knn_mean_sq_dist(pts)[10]) < float(want[12])


def test_random_ball_init_follows_dreamgaussian():
    m = GaussianModel.random_ball(2000, radius=0.5, generator=torch.Generator().manual_seed(0))
    assert m.num_gaussians == 2000 and m.max_sh_degree == 0 and m.params["shN"].shape == (2000, 0, 3)
    r = m.means.detach().norm(dim=-1)
    assert float(r.max()) <= 0.5 and abs(float((r < 0.5 * 0.5 ** (1 / 3)).float().mean()) - 0.5) < 0.05  # uniform in volume
    torch.testing.assert_close(m.opacities.detach(), torch.full((2000,), 0.1))
    sh0 = m.params["sh0"].detach()
    assert float(sh0.min()) >= 0 and float(sh0.max()) < 1 / 255  # SH of rand/255: grey ≈ 0.5
    want = torch.log(torch.sqrt(knn_mean_sq_dist(m.means.detach()).clamp_min(1e-7)))
    torch.testing.assert_close(m.params["scales"].detach(), want[:, None].expand(-1, 3))
    torch.testing.assert_close(m.quats.detach(), torch.tensor([[1.0, 0, 0, 0]]).expand(2000, 4))


def test_from_points_colours_and_render_smoke():
    pts = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]])
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]])
    m = GaussianModel.from_points(pts, cols, sh_degree=2, init_opacity=0.5)
    torch.testing.assert_close(m.rgb.detach(), cols)
    assert m.params["shN"].shape == (4, 8, 3) and m.active_sh_degree == 0
    m.step_sh_degree()
    assert m.active_sh_degree == 1
    c2w = orbit_c2w(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor([1.0]))
    rgb, alpha, meta = rasterize_splats(m.splats(), world_to_camera_opencv(c2w), intrinsics(torch.tensor([60.0]), 16, 16), 16, 16)
    assert rgb.shape == (1, 16, 16, 3) and float(alpha.detach().max()) > 0.3


def test_learning_rates_and_xyz_schedule():
    dg = GaussianLRConfig.dreamgaussian()
    assert math.isclose(dg.position_lr(0), 0.01) and math.isclose(dg.position_lr(500), 0.0002)
    assert math.isclose(dg.position_lr(250), math.sqrt(0.01 * 0.0002))  # log-linear
    assert math.isclose(dg.position_lr(10_000), 0.0002)
    gd = GaussianLRConfig.gaussiandreamer()
    assert math.isclose(gd.position_lr(0), 0.0002) and math.isclose(gd.position_lr(30_000), 0.0001)
    m = GaussianModel.random_ball(100, generator=torch.Generator().manual_seed(0))
    opt = m.make_optimizer(gd)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx(
        {"means": 0.0002, "sh0": 0.0125, "shN": 0.0125 / 20, "opacities": 0.01, "scales": 0.005, "quats": 0.001}
    )
    assert opt.defaults["eps"] == 1e-15
    assert math.isclose(GaussianModel.update_learning_rate(opt, 15_000, gd), gd.position_lr(15_000))
    assert math.isclose(next(g["lr"] for g in opt.param_groups if g["name"] == "means"), gd.position_lr(15_000))
    opt_dg = m.make_optimizer()
    assert {g["name"]: g["lr"] for g in opt_dg.param_groups} == pytest.approx(
        {"means": 0.01, "sh0": 0.01, "shN": 0.0005, "opacities": 0.05, "scales": 0.005, "quats": 0.005}
    )


def test_state_dict_round_trip_with_a_different_count():
    a, b = _random_model(30, seed=1), _random_model(7, seed=2)
    a.step_sh_degree()
    b.active_sh_degree = 0
    b.load_state_dict(a.state_dict())
    assert b.num_gaussians == 30 and b.active_sh_degree == a.active_sh_degree
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


# ------------------------------------------------------------------------------------------------ ply


def _parse_ply_by_hand(path):
    """Minimal independent reader: header lines, then float32 little-endian rows."""
    with open(path, "rb") as f:
        raw = f.read()
    head, body = raw.split(b"end_header\n", 1)
    lines = head.decode("ascii").strip().split("\n")
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    count = int(next(ln for ln in lines if ln.startswith("element vertex")).split()[2])
    props = [ln.split() for ln in lines if ln.startswith("property")]
    assert all(p[1] == "float" for p in props)
    names = [p[2] for p in props]
    rows = np.frombuffer(body, dtype="<f4").reshape(count, len(names))
    return names, rows


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_round_trip_exact_and_standard_layout(tmp_path, sh_degree):
    m = _random_model(64, sh_degree=sh_degree)
    path = tmp_path / "model.ply"
    m.save_ply(path)
    names, rows = _parse_ply_by_hand(path)
    k1 = (sh_degree + 1) ** 2 - 1
    assert names == (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * k1)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    col = {n: rows[:, i] for i, n in enumerate(names)}
    p = {k: v.detach().numpy() for k, v in m.params.items()}
    assert np.array_equal(np.stack([col["x"], col["y"], col["z"]], 1), p["means"])
    assert np.array_equal(col["nx"], np.zeros(64, np.float32))
    assert np.array_equal(np.stack([col[f"f_dc_{c}"] for c in range(3)], 1), p["sh0"][:, 0])
    if k1:  # channel-major: all red coefficients first
        assert np.array_equal(col["f_rest_0"], p["shN"][:, 0, 0]) and np.array_equal(col[f"f_rest_{k1}"], p["shN"][:, 0, 1])
        assert np.array_equal(col["f_rest_1"], p["shN"][:, 1, 0])
    assert np.array_equal(col["opacity"], p["opacities"])
    assert np.array_equal(np.stack([col[f"rot_{i}"] for i in range(4)], 1), p["quats"])
    back = GaussianModel.from_ply(path)
    assert back.num_gaussians == 64 and back.max_sh_degree == sh_degree
    for k in m.params:
        assert torch.equal(back.params[k], m.params[k]), k
    assert load_gaussian_ply(path).sh_degree == sh_degree


def test_ply_errors_and_point_clouds(tmp_path):
    with pytest.raises(FileNotFoundError):
        GaussianModel.from_ply(tmp_path / "missing.ply")
    pts = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    cols = np.random.default_rng(1).random((20, 3)).astype(np.float32)
    write_point_cloud_ply(tmp_path / "pc.ply", pts, cols)
    with pytest.raises(ValueError, match="not a 3D Gaussian splatting"):
        load_gaussian_ply(tmp_path / "pc.ply")
    p2, c2 = read_point_cloud_ply(tmp_path / "pc.ply")
    assert np.array_equal(p2, pts) and np.abs(c2 - cols).max() <= 0.5 / 255 + 1e-6
    # an ascii cloud with a face element after the vertices, as other tools write them
    (tmp_path / "ascii.ply").write_text(
        "ply\nformat ascii 1.0\ncomment hi\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 255\n3 0 1 2\n"
    )
    p3, c3 = read_point_cloud_ply(tmp_path / "ascii.ply")
    assert p3.shape == (3, 3) and np.array_equal(c3, np.eye(3, dtype=np.float32))
    # a Gaussian .ply reads as a coloured point cloud too
    m = _random_model(5, sh_degree=0)
    m.save_ply(tmp_path / "g.ply")
    p4, c4 = read_point_cloud_ply(tmp_path / "g.ply")
    assert np.array_equal(p4, m.means.detach().numpy()) and np.allclose(c4, m.rgb.detach().numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------ densify / prune


def _controlled_model():
    """Gaussians with hand-picked roles (extent 4, percent_dense 0.01 → clone if max scale ≤ 0.04)."""
    means = torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3], [0.2, 0.2, 0], [-0.2, 0, 0]])
    scales = torch.tensor([0.02, 0.02, 0.1, 0.1, 0.02, 0.02])[:, None].expand(6, 3).clone()
    scales[3, 0] = 0.3  # 3: large, anisotropic
    opac = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.005, 0.5])  # 4: transparent → pruned
    quats = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0.9, 0.1, 0.3, 0.2], [1, 0, 0, 0], [1, 0, 0, 0]]), dim=-1)
    sh0 = torch.arange(18, dtype=torch.float32).reshape(6, 1, 3)
    return GaussianModel(means, sh0, torch.zeros(6, 3, 3), torch.logit(opac), torch.log(scales), quats)


def test_densify_clone_split_prune_keeps_optimizer_in_step():
    m = _controlled_model()
    opt = m.make_optimizer()
    # one real step so that Adam has per-Gaussian state
    loss = sum((p.float() ** 2).sum() for p in m.params.values())
    loss.backward()
    opt.step()
    before = {k: v.detach().clone() for k, v in m.params.items()}
    exp_avg_before = {k: opt.state[m.params[k]]["exp_avg"].clone() for k in m.params}
    opt.zero_grad(set_to_none=True)

    strategy = GaussianDensifyStrategy.dreamgaussian(grad_threshold=0.01, prune_world_scale=None)
    strategy.check_sanity(m.params, opt)
    state = strategy.initialize_state()
    state.resize(6, torch.device("cpu"))
    # high mean gradient for 0 (small → clone), 2 and 3 (large → split); low for 1, 4 (transparent) and 5
    state.grad2d[:] = torch.tensor([0.05, 0.001, 0.04, 0.03, 0.0, 0.0])
    state.count[:] = torch.tensor([2.0, 1, 1, 1, 1, 0])
    report = strategy.refine(m.params, opt, state, step=100, generator=torch.Generator().manual_seed(0))
    assert (report.cloned, report.split, report.pruned) == (1, 2, 1)
    # survivors keep order: 0, 1, (4 pruned), 5, then the clone of 0, then the children of 2, 3, 2, 3
    assert m.num_gaussians == 6 - 2 + 1 + 4 - 1 == 8
    means = m.params["means"].detach()
    for i, j in [(0, 0), (1, 1), (2, 5), (3, 0)]:
        assert torch.equal(means[i], before["means"][j])
    assert torch.equal(m.params["sh0"][3], before["sh0"][0])  # the clone is an exact copy
    # split children: scales ÷ 1.6, colours copied, centres drawn around the parent
    children = m.params["scales"].detach()[4:]
    torch.testing.assert_close(children[0::2], before["scales"][2].expand(2, 3) - math.log(1.6))
    torch.testing.assert_close(children[1::2], before["scales"][3].expand(2, 3) - math.log(1.6))
    sh0 = m.params["sh0"].detach()
    assert torch.equal(sh0[4], before["sh0"][2]) and torch.equal(sh0[5], before["sh0"][3]) and torch.equal(sh0[6], before["sh0"][2])
    assert float((means[4::2] - before["means"][2]).norm(dim=-1).max()) < 0.1 * 5
    assert not torch.equal(means[4], means[6])
    # optimiser: one group per parameter, state sized like the parameter, old moments kept, new ones zero
    for group in opt.param_groups:
        (p,) = group["params"]
        assert p is m.params[group["name"]]
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        assert torch.equal(st["exp_avg"][:2], exp_avg_before[group["name"]][:2])
        assert torch.equal(st["exp_avg"][2], exp_avg_before[group["name"]][5])
        assert float(st["exp_avg"][3:].abs().sum()) == 0
    assert state.grad2d.shape == (8,) and float(state.grad2d.abs().sum()) == 0
    # training continues
    (m.rgb.sum() + m.means.sum()).backward()
    opt.step()


def test_opacity_reset_and_world_size_prune():
    m = _controlled_model()
    opt = m.make_optimizer()
    m.opacities.sum().backward()
    opt.step()
    reset_opacities(m.params, opt, 0.01)
    assert float(m.opacities.detach().max()) <= 0.01 + 1e-6
    assert float(opt.state[m.params["opacities"]]["exp_avg"].abs().sum()) == 0
    strategy = GaussianDensifyStrategy(grad_threshold=1.0, prune_world_scale=0.05, min_opacity=0.0)
    state = strategy.initialize_state()
    state.resize(6, torch.device("cpu"))
    rep = strategy.refine(m.params, opt, state, step=100)
    assert rep.pruned == 1 and m.num_gaussians == 5  # only index 3 has max scale 0.3 > 0.05·4


def test_schedule_and_statistics_from_real_renders():
    torch.manual_seed(0)
    m = GaussianModel.random_ball(300, radius=0.4, generator=torch.Generator().manual_seed(0))
    opt = m.make_optimizer()
    strategy = GaussianDensifyStrategy(
        grad_threshold=1e-6, refine_start=2, refine_stop=4, refine_every=2, stats_start=1, stats_stop=4,
        opacity_reset_every=3, prune_world_scale=None, min_opacity=0.0,
    )  # fmt: skip
    state = strategy.initialize_state()
    c2w = orbit_c2w(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), torch.tensor([1.5, 1.5]))
    viewmats, Ks = world_to_camera_opencv(c2w), intrinsics(torch.tensor([50.0, 50.0]), 24, 24)
    reports = []
    for step in range(1, 5):
        rgb, alpha, meta = rasterize_splats(m.splats(), viewmats, Ks, 24, 24)
        strategy.step_pre_backward(meta)
        ((rgb - 0.8) ** 2).mean().backward()
        if step == 1:
            vis = meta.visible
            norms = meta.means2d_grad_ndc().norm(dim=-1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_before = m.num_gaussians
        reports.append(strategy.step_post_backward(m.params, opt, state, step, meta))
        if step == 1:  # per_view statistics: Σ over the cameras that saw each Gaussian
            torch.testing.assert_close(state.grad2d, (norms * vis).sum(0))
            torch.testing.assert_close(state.count, vis.sum(0).float())
            assert float(state.max_radii.max()) > 0
        for group in opt.param_groups:
            assert opt.state[group["params"][0]]["exp_avg"].shape[0] == m.num_gaussians
    assert [r.refined for r in reports] == [False, True, False, True]
    assert [r.opacity_reset for r in reports] == [False, False, True, False]
    assert reports[1].cloned + reports[1].split > 0 and reports[1].num_gaussians > 300
    assert n_before <= m.num_gaussians


def test_sum_view_reduction_counts_one_sample_per_step():
    m = GaussianModel.random_ball(100, radius=0.3, generator=torch.Generator().manual_seed(1))
    c2w = orbit_c2w(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), torch.tensor([1.5, 1.5]))
    viewmats, Ks = world_to_camera_opencv(c2w), intrinsics(torch.tensor([50.0, 50.0]), 16, 16)
    rgb, _, meta = rasterize_splats(m.splats(), viewmats, Ks, 16, 16)
    rgb.square().sum().backward()
    s = GaussianDensifyStrategy.gaussiandreamer()
    state = DensifyState()
    state.resize(100, torch.device("cpu"))
    s.update_state(state, meta)
    seen = meta.visible.any(0)
    torch.testing.assert_close(state.count, seen.float())
    torch.testing.assert_close(state.grad2d, meta.means2d_grad_ndc().sum(0).norm(dim=-1) * seen)


# ------------------------------------------------------------------------------------------------ mesh


def _blob_field():
    g = torch.Generator().manual_seed(0)
    n = 400
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * 0.35 * torch.rand(n, 1, generator=g) ** (1 / 3) + torch.tensor([0.1, -0.2, 0.05])
    scales = torch.full((n, 3), 0.06)
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    opac = torch.full((n,), 0.8)
    colors = torch.tensor([[0.9, 0.3, 0.1]]).expand(n, 3)
    # plus a far speck of three stacked Gaussians: a tiny separate component, dropped by the 1 % rule
    means = torch.cat([means, torch.tensor([[0.7, 0.7, 0.7]] * 3)])
    scales, quats = torch.cat([scales, torch.full((3, 3), 0.03)]), torch.cat([quats, quats[:3]])
    opac, colors = torch.cat([opac, torch.full((3,), 0.6)]), torch.cat([colors, torch.tensor([[0.0, 1.0, 0.0]] * 3)])
    # and a transparent one that must be ignored
    means = torch.cat([means, torch.tensor([[-0.8, 0.0, 0.0]])])
    scales, quats = torch.cat([scales, torch.full((1, 3), 0.3)]), torch.cat([quats, quats[:1]])
    opac, colors = torch.cat([opac, torch.tensor([0.001])]), torch.cat([colors, torch.tensor([[0.0, 0.0, 1.0]])])
    return GaussianField(means, quats, scales, opac, colors)


def test_field_matches_a_direct_sum():
    field = _blob_field()
    pts = torch.rand(200, 3, generator=torch.Generator().manual_seed(3)) - 0.5
    d = pts.double()[:, None, :] - field.means[None]  # [P, G, 3]
    cov = torch.stack([torch.diag(s**2) for s in field.scales])
    q = torch.einsum("pgi,gij,pgj->pg", d, torch.linalg.inv(cov), d)
    w = field.opacities[None] * torch.exp(-0.5 * q) * (q <= 9)
    dens = field.forward_density(pts)[:, 0]
    torch.testing.assert_close(dens, w.sum(1).float(), atol=1e-5, rtol=1e-5)
    out = field(pts)
    want = (w @ field.colors) / w.sum(1, keepdim=True).clamp_min(1e-12)
    hit = w.sum(1) > 1e-6
    torch.testing.assert_close(out.albedo[hit], want[hit].float(), atol=1e-5, rtol=1e-5)


def test_mesh_from_a_blob_is_closed_coloured_and_exports(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from hash3d.export.mesh_files import export_mesh

    field = _blob_field()
    mesh = extract_gaussian_mesh(field, GaussianMeshConfig(resolution=48))
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0
    assert len(tm.split(only_watertight=False)) == 1  # the speck is gone ...
    with_speck = extract_gaussian_mesh(field, GaussianMeshConfig(resolution=48, min_component_fraction=0.0))
    assert len(trimesh.Trimesh(with_speck.vertices.numpy(), with_speck.faces.numpy()).split(only_watertight=False)) == 2
    assert np.abs(tm.vertices.mean(0) - np.array([0.1, -0.2, 0.05])).max() < 0.05
    assert float((mesh.colors - torch.tensor([0.9, 0.3, 0.1])).abs().max()) < 1e-3
    for suffix in ("obj", "ply"):
        export_mesh(mesh, tmp_path / f"blob.{suffix}", up_axis="z")
        back = trimesh.load(tmp_path / f"blob.{suffix}", force="mesh", process=False)
        assert len(back.faces) == mesh.n_faces
    # decimation to a face budget
    small = extract_gaussian_mesh(field, GaussianMeshConfig(resolution=48, decimate_target=500))
    assert small.n_faces <= 550
    assert trimesh.Trimesh(small.vertices.numpy(), small.faces.numpy(), process=False).volume > 0


def test_mesh_from_model_and_errors():
    m = GaussianModel.random_ball(300, radius=0.3, init_opacity=0.9, generator=torch.Generator().manual_seed(0))
    mesh = extract_gaussian_mesh(m, GaussianMeshConfig(resolution=32))
    assert mesh.n_faces > 0 and mesh.colors.shape == mesh.vertices.shape
    with pytest.raises(NoSurfaceError, match="no surface"):
        extract_gaussian_mesh(m, GaussianMeshConfig(resolution=16, density_threshold=1e6))
