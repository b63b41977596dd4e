"""The pure-torch mesh rasteriser against a slow per-pixel reference written here, the camera convention against
`hash3d.data.cameras.rays`, gradients, and (on a GPU with diffrp-nvdiffrast) against nvdiffrast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w, rays, world_to_camera_opencv
from hash3d.render.mesh_raster import has_nvdiffrast, rasterize_mesh, resolve_mesh_backend


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.mark.skipif(not (torch.cuda.is_available() and has_nvdiffrast()), reason="needs CUDA and diffrp-nvdiffrast")
def test_nvdiffrast_matches_torch_backend():
    """Same visibility (all but a few pixels whose centres sit on an edge), same image where the faces agree."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32, device="cuda")
    faces = torch.tensor(sphere.faces, dtype=torch.long, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    colors = torch.rand(verts.shape[0], 3, device="cuda", generator=g)
    uv = torch.rand(verts.shape[0], 2, device="cuda", generator=g)
    texture = torch.rand(64, 64, 3, device="cuda", generator=g, requires_grad=True)
    H, W = 96, 128
    viewmats, Ks = _cameras(H, W, torch.float32)
    viewmats, Ks = viewmats.cuda(), Ks.cuda()
    out = {}
    for backend in ("torch", "nvdiffrast"):
        img, alpha, meta = rasterize_mesh(verts, faces, viewmats, Ks, W, H, uv=uv, texture=texture, background=1.0, backend=backend)
        (grad,) = torch.autograd.grad(img.sum(), texture)
        out[backend] = (img, alpha, meta, grad)
    (ti, ta, tm, tg), (ni, na, nm, ng) = out["torch"], out["nvdiffrast"]
    assert nm.backend == "nvdiffrast"
    same = tm.face_id == nm.face_id
    assert same.float().mean() > 0.995  # edge rules differ only for centres exactly on an edge
    assert (ta != na).float().mean() < 0.005
    # nvdiffrast computes barycentrics in float32 from clip space: a few 1e-4 of difference
    torch.testing.assert_close(ti[same], ni[same], atol=2e-3, rtol=0)
    torch.testing.assert_close(tm.depth[same], nm.depth[same], atol=1e-3, rtol=0)
    assert (tg - ng).abs().sum() / tg.abs().sum() < 0.02
    # vertex-colour path and gradients with respect to the vertices
    v = verts.clone().requires_grad_(True)
    grads = {}
    for backend in ("torch", "nvdiffrast"):
        img, _, _ = rasterize_mesh(v, faces, viewmats, Ks, W, H, colors=colors, backend=backend)
        (grads[backend],) = torch.autograd.grad((img * img).sum(), v)
    rel = (grads["torch"] - grads["nvdiffrast"]).norm() / grads["torch"].norm()
    assert rel < 0.05
