"""The pure-torch mesh rasteriser against a slow per-pixel reference written here, the camera convention against
`hash3d.data.cameras.rays`, gradients, and (on a GPU with diffrp-nvdiffrast) against nvdiffrast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w, rays, world_to_camera_opencv
from hash3d.render.mesh_raster import has_nvdiffrast, rasterize_mesh, resolve_mesh_backend


def _scene(dtype=torch.float64):
    """A slanted box (12 triangles) with a triangle floating in front of it; vertex colours; uv per vertex."""
    g = torch.Generator().manual_seed(3)
    corners = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.4, 0.4) for z in (-0.3, 0.3)], dtype=dtype
    )
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    angle = 0.4
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]], dtype=dtype
    )
    verts = corners @ rot.T
    front = torch.tensor([[0.7, -0.3, -0.2], [0.9, 0.3, 0.0], [0.75, 0.0, 0.4]], dtype=dtype)
    verts = torch.cat([verts, front])
    faces.append((8, 9, 10))
    faces = torch.tensor(faces, dtype=torch.long)
    colors = torch.rand(verts.shape[0], 3, generator=g, dtype=dtype)
    uv = torch.rand(verts.shape[0], 2, generator=g, dtype=dtype)
    texture = torch.rand(5, 5, 3, generator=g, dtype=dtype)
    return verts, faces, colors, uv, texture


def _cameras(H, W, dtype=torch.float64):
    c2w = orbit_c2w(torch.tensor([20.0, -10.0]), torch.tensor([15.0, 200.0]), torch.tensor([1.5, 1.7]))
    return world_to_camera_opencv(c2w).to(dtype), intrinsics(torch.tensor([50.0, 55.0]), H, W).to(dtype)


def _bilinear(texture, u, v):
    """Reference texture lookup: texel centres at ((j + .5)/S, 1 − (i + .5)/S), clamped at the border."""
    S = texture.shape[0]
    x = u * S - 0.5
    y = (1 - v) * S - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    out = np.zeros(texture.shape[-1])
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            i = min(max(y0 + dy, 0), S - 1)
            j = min(max(x0 + dx, 0), S - 1)
            out += wy * wx * texture[i, j]
    return out


def _reference(verts, faces, colors, uv, texture, viewmat, K, H, W, bg):
    """One pixel at a time, one triangle at a time: nearest covering triangle, perspective-correct barycentrics."""
    V = verts.numpy()
    cam = V @ viewmat[:3, :3].numpy().T + viewmat[:3, 3].numpy()
    px = np.stack([K[0, 0].item() * cam[:, 0] / cam[:, 2] + K[0, 2].item(), K[1, 1].item() * cam[:, 1] / cam[:, 2] + K[1, 2].item()], 1)
    fid = np.full((H, W), -1)
    img_c = np.tile(np.asarray(bg, dtype=np.float64), (H, W, 1))
    img_t = img_c.copy()
    for i in range(H):
        for j in range(W):
            p = np.array([j + 0.5, i + 0.5])
            best = (np.inf, -1, None)
            for f, (a, b, c) in enumerate(faces.tolist()):
                A, B, Cc = px[a], px[b], px[c]
                area = (B[0] - A[0]) * (Cc[1] - A[1]) - (B[1] - A[1]) * (Cc[0] - A[0])
                l1 = ((p[0] - A[0]) * (Cc[1] - A[1]) - (p[1] - A[1]) * (Cc[0] - A[0])) / area
                l2 = ((B[0] - A[0]) * (p[1] - A[1]) - (B[1] - A[1]) * (p[0] - A[0])) / area
                lam = np.array([1 - l1 - l2, l1, l2])
                if (lam < 0).any():
                    continue
                zs = cam[[a, b, c], 2]
                z = 1 / (lam / zs).sum()
                if z < best[0]:
                    w = lam / zs
                    best = (z, f, w / w.sum())
            if best[1] >= 0:
                fid[i, j] = best[1]
                tri = faces[best[1]].tolist()
                img_c[i, j] = (best[2][:, None] * colors.numpy()[tri]).sum(0)
                st = (best[2][:, None] * uv.numpy()[tri]).sum(0)
                img_t[i, j] = _bilinear(texture.numpy(), st[0], st[1])
    return fid, img_c, img_t


def test_torch_rasteriser_matches_slow_reference():
    verts, faces, colors, uv, texture = _scene()
    H, W = 14, 18
    viewmats, Ks = _cameras(H, W)
    bg = [0.2, 0.3, 0.9]
    img_c, alpha, meta = rasterize_mesh(verts, faces, viewmats, Ks, W, H, colors=colors, background=torch.tensor(bg), backend="torch")
    img_t, alpha_t, meta_t = rasterize_mesh(verts, faces, viewmats, Ks, W, H, uv=uv, texture=texture, background=torch.tensor(bg), backend="torch")
    assert meta.backend == "torch" and img_c.shape == (2, H, W, 3) and alpha.shape == (2, H, W, 1)
    for c in range(2):
        fid, ref_c, ref_t = _reference(verts, faces, colors, uv, texture, viewmats[c], Ks[c], H, W, bg)
        assert (fid >= 0).sum() > 0.2 * H * W and (fid < 0).sum() > 0  # the scene is neither empty nor full
        np.testing.assert_array_equal(meta.face_id[c].numpy(), fid)
        np.testing.assert_array_equal(meta_t.face_id[c].numpy(), fid)
        np.testing.assert_allclose(img_c[c].numpy(), ref_c, atol=1e-9)
        np.testing.assert_allclose(img_t[c].numpy(), ref_t, atol=1e-9)
        np.testing.assert_array_equal(alpha[c, ..., 0].numpy(), (fid >= 0).astype(np.float64))
    # the front triangle hides part of the box in the first view
    assert (meta.face_id[0] == 12).any()


def test_chunking_does_not_change_the_result():
    from hash3d.render.mesh_raster import MeshRasterOptions

    verts, faces, colors, _, _ = _scene()
    viewmats, Ks = _cameras(20, 20)
    a, _, ma = rasterize_mesh(verts, faces, viewmats, Ks, 20, 20, colors=colors, backend="torch")
    b, _, mb = rasterize_mesh(verts, faces, viewmats, Ks, 20, 20, colors=colors, backend="torch", options=MeshRasterOptions(max_chunk_elements=7))
    assert torch.equal(ma.face_id, mb.face_id)
    torch.testing.assert_close(a, b)


def test_camera_convention_and_perspective_correctness():
    """A big quad coloured by world position: every covered pixel shows the point where its centre ray (from
    `hash3d.data.cameras.rays`) meets the quad; depth, normal and viewcos agree with that geometry."""
    H, W = 12, 16
    c2w = orbit_c2w(torch.tensor([25.0]), torch.tensor([30.0]), torch.tensor([3.0]))
    verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fovy = torch.tensor([40.0])
    img, alpha, meta = rasterize_mesh(
        verts, faces, world_to_camera_opencv(c2w).double(), intrinsics(fovy, H, W).double(), W, H, colors=verts, backend="torch"
    )
    origins, dirs = rays(c2w, fovy, H, W)
    c2w = c2w.double()
    o, d = origins[0].double(), dirs[0].double()
    t = -o[..., 2] / d[..., 2]
    hit = o + t[..., None] * d  # [H, W, 3] on the plane z = 0
    inside = (hit[..., :2].abs() <= 1).all(-1)
    covered = alpha[0, ..., 0] > 0
    assert covered.sum() > 20
    assert torch.equal(covered, inside)
    torch.testing.assert_close(img[0][covered], hit[covered], atol=1e-5, rtol=0)
    # depth = distance along the camera's viewing axis; the quad faces +z, seen from above
    forward = -c2w[0, :3, 2]
    torch.testing.assert_close(meta.depth[0, ..., 0][covered], ((hit - c2w[0, :3, 3]) @ forward)[covered], atol=1e-5, rtol=0)
    assert torch.allclose(meta.normal[0][covered], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    expected_cos = (-d[..., 2])[covered]
    torch.testing.assert_close(meta.viewcos[0, ..., 0][covered], expected_cos, atol=1e-5, rtol=0)


def test_gradients_reach_colours_texture_and_vertices():
    verts, faces, colors, uv, texture = _scene()
    H, W = 10, 12
    viewmats, Ks = _cameras(H, W)
    colors = colors.clone().requires_grad_(True)
    texture = texture.clone().requires_grad_(True)
    # colours: the image is linear in them, the gradient of a weighted sum is the barycentric mass per vertex
    img, _, meta = rasterize_mesh(verts, faces, viewmats, Ks, W, H, colors=colors, backend="torch")
    weights = torch.rand(img.shape, dtype=img.dtype, generator=torch.Generator().manual_seed(0))
    (img * weights).sum().backward()
    expected = torch.zeros_like(colors)
    covered = meta.face_id >= 0
    corners = faces[meta.face_id[covered]]  # [K, 3]
    contrib = meta.bary[covered][..., None] * weights[covered][:, None, :]  # [K, 3, 3]
    expected.index_add_(0, corners.reshape(-1), contrib.reshape(-1, 3))
    torch.testing.assert_close(colors.grad, expected)
    # texture and vertices: finite differences (double precision; pixels stay on their triangles)
    small = dict(uv=uv, backend="torch")

    def render_tex(tex):
        return rasterize_mesh(verts, faces, viewmats[:1], Ks[:1], W, H, texture=tex, **small)[0]

    assert torch.autograd.gradcheck(render_tex, (texture,), eps=1e-6, atol=1e-6)
    v = verts.clone().requires_grad_(True)

    def render_geo(vv):
        return rasterize_mesh(vv, faces, viewmats[:1], Ks[:1], W, H, colors=colors.detach(), backend="torch")[0]

    assert torch.autograd.gradcheck(render_geo, (v,), eps=1e-7, atol=1e-5)


def test_bad_arguments():
    verts, faces, colors, uv, texture = _scene()
    viewmats, Ks = _cameras(8, 8)
    with pytest.raises(ValueError, match="either colors"):
        rasterize_mesh(verts, faces, viewmats, Ks, 8, 8)
    with pytest.raises(ValueError, match="uv"):
        rasterize_mesh(verts, faces, viewmats, Ks, 8, 8, texture=texture)
    with pytest.raises(ValueError, match="outside"):
        rasterize_mesh(verts, faces + 100, viewmats, Ks, 8, 8, colors=colors)
    with pytest.raises(ValueError, match="unknown mesh backend"):
        resolve_mesh_backend("opengl", "cpu")
    if has_nvdiffrast():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_mesh_backend("nvdiffrast", "cpu")
    else:
        with pytest.raises(ImportError, match="diffrp-nvdiffrast"):
            resolve_mesh_backend("nvdiffrast", "cpu")
    assert resolve_mesh_backend("auto", "cpu") == "torch"


def test_backend_comparison_names_convention_bugs(load_bench):
    """bench/mesh_raster_check.py's comparison (the GPU test's failure report): agreeing renders fit best unchanged, a
    vertically flipped one fits best flipped back, one drawn half a pixel lower fits best shifted half a pixel, and
    rotated barycentrics fit best rotated back."""
    check = load_bench("mesh_raster_check")
    check_scene, compare_renders = check.check_scene, check.compare_renders
    format_comparison, render_outputs = check.format_comparison, check.render_outputs

    H, W = 24, 32
    scene = check_scene(H, W)

    def render(Ks):
        out = rasterize_mesh(
            scene["vertices"], scene["faces"], scene["viewmats"], Ks, W, H,
            uv=scene["uv"], texture=scene["texture"], background=1.0, backend="torch",
        )
        return render_outputs(*out)

    ref = render(scene["Ks"])
    m = compare_renders(ref, ref)
    assert m["best_probe"] == "identity" and m["face_same"] == 1 and m["rgb_max"] == 0
    flipped = {k: v.flip(1) for k, v in ref.items()}
    m = compare_renders(ref, flipped)
    assert m["best_probe"] == "flip_v" and m["face_same"] < 0.9, format_comparison(m)
    lower = scene["Ks"].clone()
    lower[:, 1, 2] += 0.5
    m = compare_renders(ref, render(lower))
    assert m["best_probe"] == "dy+0.5", format_comparison(m)
    rotated = dict(ref, bary=ref["bary"].roll(1, -1))
    m = compare_renders(ref, rotated)
    assert m["bary_rot2_mean_same_face"] == 0 < m["bary_mean_same_face"], format_comparison(m)


def test_nvdiffrast_triangle_ids_decode():
    """rast[..., 3] holds id + 1 as a float up to 2^24 and as the bit pattern 0x4a800000 + id above."""
    import struct

    from hash3d.render.mesh_raster import _triangle_ids

    ids = [0, 1, 7, 1 << 24, (1 << 24) + 1, 30_000_000, 123_456_789]
    enc = [float(i) if i <= 1 << 24 else struct.unpack("<f", struct.pack("<i", 0x4A800000 + i))[0] for i in ids]
    rast = torch.zeros(len(ids), 4)
    rast[:, 3] = torch.tensor(enc)
    assert _triangle_ids(rast[..., 3]).tolist() == ids


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_nvdiffrast()), reason="needs CUDA and diffrp-nvdiffrast")
def test_nvdiffrast_matches_torch_backend(load_bench):
    """Same visibility (all but the pixels whose centres lie within a snapping step of an edge), same image, depth and
    texture gradients where the faces agree, same vertex gradients over the pixels where the faces agree.

    nvdiffrast decides coverage on vertices snapped to 1/16 pixel, the torch backend on the exact ones: about 0.4 % of
    the pixels of this scene go to the neighbouring triangle. Their colour hardly changes (colours are continuous
    across shared edges) but their gradient with respect to vertex positions is that of the other triangle (it jumps
    across an edge, and grows like 1/height on the thin triangles near the silhouette), while the interior
    contributions to a vertex largely cancel: those few pixels alone move the vertex gradient by 10 % here (and by
    7 % to 90 % at other sizes; emulated on the CPU). So vertex gradients are compared over the pixels where both
    backends pick the same face, where they agree to ~1e-3.

    Every failure prints the comparison of bench/mesh_raster_check.py (rgb / alpha / depth / barycentric
    differences, and flipped or half-pixel-shifted probes that name a convention bug); bench/mesh_raster_check.py
    prints the same on a GPU machine and saves the images.
    """
    check = load_bench("mesh_raster_check")
    check_scene, compare_renders, format_comparison = check.check_scene, check.compare_renders, check.format_comparison
    position_gradient, render_outputs, worst_pixels = check.position_gradient, check.render_outputs, check.worst_pixels

    H, W = 96, 128
    scene = check_scene(H, W, "cuda")
    texture = scene["texture"].clone().requires_grad_(True)
    out, tex_grads, backends = {}, {}, {}
    for backend in ("torch", "nvdiffrast"):
        img, alpha, meta = rasterize_mesh(
            scene["vertices"], scene["faces"], scene["viewmats"], scene["Ks"], W, H,
            uv=scene["uv"], texture=texture, background=1.0, backend=backend,
        )
        (tex_grads[backend],) = torch.autograd.grad(img.sum(), texture)
        out[backend], backends[backend] = render_outputs(img, alpha, meta), meta.backend
    t, n = out["torch"], out["nvdiffrast"]
    m = compare_renders(t, n)
    report = format_comparison(m) + "\n" + worst_pixels(t, n)
    assert backends["nvdiffrast"] == "nvdiffrast"
    assert m["best_probe"] == "identity", f"a convention differs (see the probes)\n{report}"
    assert m["face_same"] > 0.99, f"visibility differs\n{report}"
    assert m["alpha_mismatch"] < 0.005, f"coverage differs\n{report}"
    # nvdiffrast computes barycentrics in float32 from clip space: measured on an H100, max 0.0025 here, 0.0053 at 512²
    assert m["rgb_max_same_face"] < 1e-2, f"colours differ on pixels where the faces agree\n{report}"
    assert m["depth_max_same_face"] < 1e-3, f"depth differs on pixels where the faces agree\n{report}"
    tg, ng = tex_grads["torch"], tex_grads["nvdiffrast"]
    tex_rel = ((tg - ng).abs().sum() / tg.abs().sum()).item()
    assert tex_rel < 0.02, f"texture gradients differ: relative L1 {tex_rel:.4g}\n{report}"
    # vertex-colour path and gradients with respect to the vertices, over the pixels where the faces agree, at 512²:
    # at 128x96 the few pixels next to silhouette edges still weigh 10 % of it (measured 0.10), at 512² 0.0011
    H = W = 512
    scene = check_scene(H, W, "cuda")
    t, n = (render_outputs(*rasterize_mesh(
        scene["vertices"], scene["faces"], scene["viewmats"], scene["Ks"], W, H, uv=scene["uv"], texture=scene["texture"],
        background=1.0, backend=b)) for b in ("torch", "nvdiffrast"))  # fmt: skip
    same = t["face_id"] == n["face_id"]
    grads = {b: position_gradient(scene, W, H, b, weight=same) for b in ("torch", "nvdiffrast")}
    rel = ((grads["torch"] - grads["nvdiffrast"]).norm() / grads["torch"].norm()).item()
    full = {b: position_gradient(scene, W, H, b) for b in ("torch", "nvdiffrast")}
    rel_all = ((full["torch"] - full["nvdiffrast"]).norm() / full["torch"].norm()).item()
    assert rel < 0.01, (
        f"vertex gradients differ over the pixels where the faces agree: relative norm {rel:.4g} "
        f"(over all pixels {rel_all:.4g}, not compared: pixels that change face dominate it)\n{report}"
    )
