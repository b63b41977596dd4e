"""The pure-torch Gaussian rasteriser against a slow per-pixel reference written here, closed forms, camera
conventions, and (on a GPU with gsplat) against gsplat."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv
from hash3d.render.gaussian_raster import RasterOptions, rasterize_gaussians, resolve_backend


# ------------------------------------------------------------------------------------------------
# slow reference: one pixel at a time, one Gaussian at a time, straight from the 3DGS equations


def _ref_rotation(q):
    # rotate the basis vectors with q·v·q* (Hamilton product), independent of the library's closed form
    q = q / q.norm()

    def mul(a, b):
        aw, ax, ay, az = a
        bw, bx, by, bz = b
        return torch.stack(
            [
                aw * bw - ax * bx - ay * by - az * bz,
                aw * bx + ax * bw + ay * bz - az * by,
                aw * by - ax * bz + ay * bw + az * bx,
                aw * bz + ax * by - ay * bx + az * bw,
            ]
        )

    conj = q * q.new_tensor([1.0, -1.0, -1.0, -1.0])
    cols = []
    for e in torch.eye(3, dtype=q.dtype):
        v = torch.cat([q.new_zeros(1), e])
        cols.append(mul(mul(q, v), conj)[1:])
    return torch.stack(cols, 1)


def _ref_sh(deg, d, coeffs):
    d = d / d.norm()
    x, y, z = d[0], d[1], d[2]
    out = 0.28209479177387814 * coeffs[0]
    if deg >= 1:
        c1 = 0.4886025119029199
        out = out - c1 * y * coeffs[1] + c1 * z * coeffs[2] - c1 * x * coeffs[3]
    assert deg <= 1
    return out


def reference_render(means, quats, scales, opacities, colors, viewmat, K, W, H, bg, sh_degree=None, opts=RasterOptions()):
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    cam_center = -viewmat[:3, :3].T @ viewmat[:3, 3]
    splats = []
    for i in range(means.shape[0]):
        t = viewmat[:3, :3] @ means[i] + viewmat[:3, 3]
        if not (opts.near_plane < float(t[2].detach()) < opts.far_plane):
            continue
        Rq = _ref_rotation(quats[i])
        S = torch.diag(scales[i])
        cov = viewmat[:3, :3] @ (Rq @ S @ S @ Rq.T) @ viewmat[:3, :3].T
        tanx, tany = 0.5 * W / fx, 0.5 * H / fy
        u = torch.clamp(t[0] / t[2], -(cx / fx + 0.3 * tanx), (W - cx) / fx + 0.3 * tanx)
        v = torch.clamp(t[1] / t[2], -(cy / fy + 0.3 * tany), (H - cy) / fy + 0.3 * tany)
        z = t[2]
        J = torch.stack(
            [torch.stack([fx / z, 0 * z, -fx * u / z]), torch.stack([0 * z, fy / z, -fy * v / z])]
        )
        cov2 = J @ cov @ J.T + opts.eps2d * torch.eye(2, dtype=means.dtype)
        conic = torch.linalg.inv(cov2)
        mean2 = torch.stack([fx * t[0] / t[2] + cx, fy * t[1] / t[2] + cy])
        if sh_degree is None:
            col = colors[i]
        else:
            col = torch.clamp_min(_ref_sh(sh_degree, means[i] - cam_center, colors[i]) + 0.5, 0.0)
        splats.append((float(t[2].detach()), mean2, conic, opacities[i], col, t[2]))
    splats.sort(key=lambda s: s[0])
    rgb_rows, a_rows, d_rows = [], [], []
    for j in range(H):
        rgb_row, a_row, d_row = [], [], []
        for i in range(W):
            p = torch.tensor([i + 0.5, j + 0.5], dtype=means.dtype)
            T = torch.ones((), dtype=means.dtype)
            c = torch.zeros(colors.shape[-1], dtype=means.dtype)
            dep = torch.zeros((), dtype=means.dtype)
            for _, m2, con, o, col, z in splats:
                d = p - m2
                power = -0.5 * (d @ con @ d)
                if float(power.detach()) > 0:
                    continue
                alpha = torch.clamp(o * torch.exp(power), max=opts.alpha_max)
                if float(alpha.detach()) < opts.alpha_min:
                    continue
                if float((T * (1 - alpha)).detach()) < opts.min_transmittance:
                    break
                c = c + alpha * T * col
                dep = dep + alpha * T * z
                T = T * (1 - alpha)
            if bg is not None:
                c = c + T * bg
            rgb_row.append(c)
            a_row.append(1 - T)
            d_row.append(dep)
        rgb_rows.append(torch.stack(rgb_row))
        a_rows.append(torch.stack(a_row))
        d_rows.append(torch.stack(d_row))
    return torch.stack(rgb_rows), torch.stack(a_rows)[..., None], torch.stack(d_rows)[..., None]


def _cameras(C, W, H, dtype=torch.float64, fovy=50.0, dist=2.0):
    elev = torch.tensor([20.0, -10.0, 60.0])[:C]
    azim = torch.tensor([30.0, 200.0, -75.0])[:C]
    c2w = orbit_c2w(elev, azim, torch.full((C,), dist))
    return world_to_camera_opencv(c2w).to(dtype), intrinsics(torch.full((C,), fovy), H, W).to(dtype)


def _scene(n=5, sh=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    quats = torch.randn(n, 4, generator=g)
    scales = 0.04 + 0.2 * torch.rand(n, 3, generator=g)
    opacities = 0.3 + 0.65 * torch.rand(n, generator=g)
    opacities[0] = 0.995  # exercises the 0.99 clamp
    colors = torch.randn(n, 4, 3, generator=g) * 0.5 if sh else torch.rand(n, 3, generator=g)
    return [x.to(dtype) for x in (means, quats, scales, opacities, colors)]


@pytest.mark.parametrize(
    "sh,bg_kind,C",
    [(False, "none", 1), (False, "shared", 2), (True, "per_camera", 2)],
)
def test_torch_backend_matches_reference_forward_and_gradients(sh, bg_kind, C):
    W, H = 16, 14
    params = [p.requires_grad_() for p in _scene(5, sh=sh)]
    viewmats, Ks = _cameras(C, W, H)
    bg = {"none": None, "shared": torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64),
          "per_camera": torch.rand(C, 3, dtype=torch.float64)}[bg_kind]  # fmt: skip
    sh_degree = 1 if sh else None
    rgb, alpha, meta = rasterize_gaussians(*params, viewmats, Ks, W, H, bg, "torch", sh_degree=sh_degree)
    assert rgb.shape == (C, H, W, 3) and alpha.shape == (C, H, W, 1) and meta.depth.shape == (C, H, W, 1)
    refs = []
    for c in range(C):
        b = None if bg is None else (bg if bg.dim() == 1 else bg[c])
        refs.append(reference_render(*params, viewmats[c], Ks[c], W, H, b, sh_degree))
    ref_rgb = torch.stack([r[0] for r in refs])
    ref_a = torch.stack([r[1] for r in refs])
    ref_d = torch.stack([r[2] for r in refs])
    assert float(ref_a.detach().max()) > 0.5, "the scene should cover part of the image"
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alpha, ref_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(meta.depth, ref_d, atol=1e-4, rtol=1e-4)

    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in (rgb, alpha, meta.depth)]
    grads = torch.autograd.grad((rgb, alpha, meta.depth), params, cot)
    ref_grads = torch.autograd.grad((ref_rgb, ref_a, ref_d), params, cot)
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], grads, ref_grads):
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_early_termination_matches_3dgs():
    # three nearly opaque splats on the optical axis: after two of them T = 0.02² = 4e-4; the third would take
    # it to 8e-6 < 1e-4, so the pixel stops before it and its colour never shows
    W = H = 9
    viewmat = torch.eye(4, dtype=torch.float64)[None]
    K = torch.tensor([[[12.0, 0, 4.5], [0, 12.0, 4.5], [0, 0, 1]]], dtype=torch.float64)
    means = torch.tensor([[0.0, 0, 2.0], [0.02, 0, 2.5], [0, 0.01, 3.0]], dtype=torch.float64).requires_grad_()
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=torch.float64).requires_grad_()
    scales = torch.full((3, 3), 0.2, dtype=torch.float64).requires_grad_()
    opac = torch.full((3,), 0.98, dtype=torch.float64).requires_grad_()
    cols = torch.eye(3, dtype=torch.float64).requires_grad_()
    params = [means, quats, scales, opac, cols]
    rgb, alpha, meta = rasterize_gaussians(*params, viewmat, K, W, H, None, "torch")
    ref_rgb, ref_a, ref_d = reference_render(*params, viewmat[0], K[0], W, H, None)
    assert float(rgb[0, 4, 4, 2].detach()) == 0.0 and float(ref_rgb[4, 4, 2].detach()) == 0.0
    assert abs(float(alpha[0, 4, 4, 0].detach()) - (1 - 0.02**2)) < 1e-3
    torch.testing.assert_close(rgb[0], ref_rgb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alpha[0], ref_a, atol=1e-4, rtol=1e-4)
    cot = torch.randn(rgb.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(rgb, params, cot), torch.autograd.grad(ref_rgb[None], params, cot)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_result_does_not_depend_on_tiles_or_chunks():
    W, H = 37, 29
    params = _scene(30, seed=3)
    viewmats, Ks = _cameras(2, W, H)
    outs = [
        rasterize_gaussians(*params, viewmats, Ks, W, H, None, "torch", options=RasterOptions(tile_size=ts, max_chunk_elements=ce))
        for ts, ce in [(16, 1 << 21), (5, 1 << 21), (8, 64), (64, 1 << 21)]
    ]
    for rgb, alpha, meta in outs[1:]:
        torch.testing.assert_close(rgb, outs[0][0], atol=1e-12, rtol=0)
        torch.testing.assert_close(alpha, outs[0][1], atol=1e-12, rtol=0)
        torch.testing.assert_close(meta.depth, outs[0][2].depth, atol=1e-12, rtol=0)


def test_isotropic_gaussian_has_closed_form_footprint():
    W, H, f = 33, 33, 40.0
    z, s, o = 3.0, 0.15, 0.7
    viewmat = torch.eye(4, dtype=torch.float64)[None]
    K = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    quats = torch.tensor([[0.3, -0.2, 0.9, 0.1]], dtype=torch.float64)  # any rotation: isotropic
    scales = torch.full((1, 3), s, dtype=torch.float64)
    color = torch.tensor([[0.9, 0.4, 0.1]], dtype=torch.float64)
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    rgb, alpha, meta = rasterize_gaussians(
        means, quats, scales, torch.tensor([o], dtype=torch.float64), color, viewmat, K, W, H, bg, "torch"
    )
    var = (f * s / z) ** 2 + 0.3
    jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r2 = (ii + 0.5 - W / 2) ** 2 + (jj + 0.5 - H / 2) ** 2
    a = o * torch.exp(-0.5 * r2 / var)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    torch.testing.assert_close(alpha[0, ..., 0], a, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(rgb[0], a[..., None] * color[0] + (1 - a[..., None]) * bg, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(meta.depth[0, ..., 0], a * z, atol=1e-12, rtol=1e-10)
    assert meta.means2d[0, 0].tolist() == [W / 2, H / 2]
    assert meta.radii[0, 0].tolist() == [math.ceil(math.sqrt(2 * math.log(o * 255) * var))] * 2


def test_background_compositing():
    W, H = 12, 10
    viewmats, Ks = _cameras(2, W, H, torch.float32)
    means, quats, scales, opacities, colors = _scene(4, dtype=torch.float32)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    # nothing in front of the cameras: the background everywhere, alpha 0
    rgb, alpha, _ = rasterize_gaussians(means[:0], quats[:0], scales[:0], opacities[:0], colors[:0], viewmats, Ks, W, H, bg, "torch")
    torch.testing.assert_close(rgb, bg[:, None, None, :].expand(2, H, W, 3))
    assert float(alpha.abs().max()) == 0
    # with Gaussians: rgb(bg) = rgb(black) + (1 − alpha)·bg
    rgb0, a0, _ = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, W, H, None, "torch")
    rgb1, a1, _ = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, W, H, bg, "torch")
    torch.testing.assert_close(a0, a1)
    torch.testing.assert_close(rgb1, rgb0 + (1 - a0) * bg[:, None, None, :])
    rgb2, _, _ = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, W, H, bg[0], "torch")
    torch.testing.assert_close(rgb2[1], rgb0[1] + (1 - a0[1]) * bg[0])


def test_depth_ordering():
    W = H = 16
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales = torch.full((2, 3), 0.3)
    opac = torch.tensor([0.9, 0.9])
    red_blue = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    near_far = torch.tensor([[0.0, 0, 2.0], [0.0, 0, 3.0]])
    rgb, _, meta = rasterize_gaussians(near_far, quats, scales, opac, red_blue, viewmat, K, W, H, None, "torch")
    centre = rgb[0, 8, 8]
    assert centre[0] > 0.85 and centre[2] < 0.15  # red in front
    # the input order does not matter, only depth
    rgb_rev, _, _ = rasterize_gaussians(near_far.flip(0), quats, scales, opac, red_blue.flip(0), viewmat, K, W, H, None, "torch")
    torch.testing.assert_close(rgb_rev, rgb)
    # swap the depths: blue in front
    rgb_sw, _, _ = rasterize_gaussians(near_far.flip(0), quats, scales, opac, red_blue, viewmat, K, W, H, None, "torch")
    assert rgb_sw[0, 8, 8, 2] > 0.85 and rgb_sw[0, 8, 8, 0] < 0.15
    # 3DGS: αᵢ = 0.9·G, c = α₁c₁ + (1−α₁)α₂c₂ at the centre pixel (G≈1 there)
    assert float(meta.depths[0, 0]) == 2.0 and float(meta.depths[0, 1]) == 3.0


def test_camera_convention_world_origin_and_up():
    W, H = 32, 32
    c2w = orbit_c2w(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 135.0]), torch.tensor([2.5, 2.5]))
    viewmats, Ks = world_to_camera_opencv(c2w), intrinsics(torch.tensor([40.0, 40.0]), H, W)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales = torch.full((2, 3), 0.02)
    _, _, meta = rasterize_gaussians(means, quats, scales, torch.ones(2) * 0.9, torch.ones(2, 3), viewmats, Ks, W, H)
    torch.testing.assert_close(meta.means2d[:, 0], torch.tensor([[16.0, 16.0]] * 2), atol=1e-4, rtol=0)
    assert (meta.means2d[:, 1, 1] < 16.0 - 2).all()  # +z (world up) is above the centre: smaller row index
    # the single origin splat lights the centre pixels
    rgb, _, _ = rasterize_gaussians(means[:1], quats[:1], scales[:1], torch.ones(1) * 0.9, torch.ones(1, 3), viewmats, Ks, W, H)
    peak = rgb[0, ..., 0].flatten().argmax()
    assert {int(peak) // W, int(peak) % W} <= {15, 16}
    # azimuth 0 looks from +x: world +y is on the right of the image
    _, _, meta = rasterize_gaussians(
        torch.tensor([[0.0, 0.3, 0.0]]), quats[:1], scales[:1], torch.ones(1) * 0.9, torch.ones(1, 3), viewmats[:1], Ks[:1], W, H
    )
    assert float(meta.means2d[0, 0, 0]) > 18


def test_means2d_gradient_for_densification_and_culling():
    W, H = 24, 20
    means, quats, scales, opacities, colors = _scene(6, dtype=torch.float32)
    means = torch.cat([means, torch.tensor([[5.0, 0.0, 0.0]])])  # camera 0 sits at +x looking at -x: behind it
    quats = torch.cat([quats, quats[:1]])
    scales, opacities, colors = torch.cat([scales, scales[:1]]), torch.cat([opacities, opacities[:1]]), torch.cat([colors, colors[:1]])
    means.requires_grad_()
    c2w = orbit_c2w(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.0, 2.0]))
    viewmats, Ks = world_to_camera_opencv(c2w), intrinsics(torch.tensor([50.0, 50.0]), H, W)
    rgb, alpha, meta = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    assert meta.backend == "torch" and meta.means2d.shape == (2, 7, 2) and meta.radii.dtype == torch.int32
    assert not bool(meta.visible[0, 6]) and meta.radii[0, 6].tolist() == [0, 0]
    (rgb.square().sum() + alpha.sum()).backward()
    g = meta.means2d.grad
    assert g is not None and g.shape == (2, 7, 2)
    assert float(g[0, 6].abs().sum()) == 0
    assert bool((g[meta.visible].norm(dim=-1) > 0).all())
    ndc = meta.means2d_grad_ndc()
    torch.testing.assert_close(ndc[..., 0], g[..., 0] * W / 2)
    assert torch.isfinite(means.grad).all()


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises((ValueError, ImportError)):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(ValueError):
        resolve_backend("cuda", "cpu")  # type: ignore[arg-type]


def test_bad_shapes_are_errors():
    means, quats, scales, opacities, colors = _scene(3, dtype=torch.float32)
    viewmats, Ks = _cameras(1, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="opacities"):
        rasterize_gaussians(means, quats, scales, opacities[:, None], colors, viewmats, Ks, 8, 8)
    with pytest.raises(ValueError, match="background"):
        rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, 8, 8, torch.zeros(4))


# ------------------------------------------------------------------------------------------------
# GPU: the torch backend against gsplat


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None, reason="needs CUDA and gsplat"
)
@pytest.mark.parametrize("sh", [False, True])
def test_torch_backend_matches_gsplat(sh):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    n, W, H = 400, 96, 80
    means = ((torch.rand(n, 3, generator=g) - 0.5) * 1.0).to(dev)
    quats = torch.randn(n, 4, generator=g).to(dev)
    scales = (0.01 + 0.05 * torch.rand(n, 3, generator=g)).to(dev)
    opacities = (0.05 + 0.85 * torch.rand(n, generator=g)).to(dev)  # ≤ 0.9: the 0.99 / 0.999 clamps never act
    colors = (torch.randn(n, 4, 3, generator=g) * 0.4 if sh else torch.rand(n, 3, generator=g)).to(dev)
    c2w = orbit_c2w(torch.tensor([15.0, -20.0]), torch.tensor([10.0, 250.0]), torch.tensor([2.2, 2.6]))
    viewmats, Ks = world_to_camera_opencv(c2w).to(dev), intrinsics(torch.tensor([45.0, 60.0]), H, W).to(dev)
    bg = torch.tensor([0.1, 0.2, 0.3], device=dev)
    outs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        ps = [p.clone().requires_grad_() for p in (means, quats, scales, opacities, colors)]
        rgb, alpha, meta = rasterize_gaussians(*ps, viewmats, Ks, W, H, bg, backend)
        assert meta.backend == backend
        cot = torch.Generator(device=dev).manual_seed(1)
        loss = (rgb * torch.randn(rgb.shape, device=dev, generator=cot)).sum() + (alpha * 0.5).sum()
        loss.backward()
        outs[backend] = (rgb.detach(), alpha.detach(), meta.depth.detach(), meta)
        grads[backend] = [p.grad for p in ps] + [meta.means2d.grad]
    t, s = outs["torch"], outs["gsplat"]
    # float32 sums in different orders; tolerances measured, not derived
    torch.testing.assert_close(t[0], s[0], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(t[1], s[1], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(t[2], s[2], atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(t[3].means2d, s[3].means2d, atol=1e-3, rtol=1e-4)
    assert float((t[3].visible != s[3].visible).float().mean()) < 0.01
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors", "means2d"], grads["torch"], grads["gsplat"]):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert rel < 2e-2, f"{name}: relative gradient difference {rel:.3g}"


def _lock(path, age_s: float):
    import os
    import time

    path.parent.mkdir(parents=True)
    path.write_text("")
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def test_a_stale_jit_build_lock_is_found_and_a_fresh_one_is_not(tmp_path, monkeypatch):
    from hash3d.render.backends import STALE_LOCK_S, stale_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "custom"))
    assert stale_build_lock("gsplat_cuda") is None  # nothing built yet
    lock = _lock(tmp_path / "custom" / "gsplat_cuda" / "lock", STALE_LOCK_S + 120)
    path, age = stale_build_lock("gsplat_cuda")
    assert path == lock and STALE_LOCK_S + 110 < age < STALE_LOCK_S + 300
    assert stale_build_lock("gsplat_cuda", max_age_s=STALE_LOCK_S + 600) is None  # a build may be running
    assert stale_build_lock("other_ext") is None

    # torch's default root keeps one subfolder per Python / CUDA version
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr("torch.utils.cpp_extension.get_default_build_root", lambda: str(tmp_path / "root"))
    _lock(tmp_path / "root" / "py312_cu130" / "gsplat_cuda" / "lock", 60)
    assert stale_build_lock("gsplat_cuda") is None
    old = _lock(tmp_path / "root" / "py311_cu128" / "gsplat_cuda" / "lock", 3 * STALE_LOCK_S)
    assert stale_build_lock("gsplat_cuda")[0] == old


def test_gsplat_import_warns_about_a_stale_build_lock(tmp_path, monkeypatch, caplog):
    import logging
    import sys
    import types

    import hash3d.render.gaussian_raster as raster
    from hash3d.render.backends import STALE_LOCK_S

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(__version__="9.9"))
    monkeypatch.setattr(raster, "_gsplat_announced", False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _lock(tmp_path / "gsplat_cuda" / "lock", STALE_LOCK_S + 600)
    with caplog.at_level(logging.WARNING):
        raster._import_gsplat()
        raster._import_gsplat()  # said once per process
    stale = [r.getMessage() for r in caplog.records if "build lock" in r.getMessage()]
    assert len(stale) == 1 and str(lock) in stale[0] and "delete that file" in stale[0]
