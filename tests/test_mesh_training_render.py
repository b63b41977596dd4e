"""Pieces of mesh training: silhouette anti-aliasing, the mesh renderer, mesh regularisers, the neural environment
map, Magic3D's light sampling and soft shading."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hash3d.data.cameras import intrinsics, orbit_c2w, world_to_camera_opencv
from hash3d.data.random_camera import RandomCameraConfig, RandomCameraSampler, magic3d_light
from hash3d.render.env_map import NeuralEnvironmentMapBackground, spherical_harmonics
from hash3d.render.material import DiffuseWithPointLight, MaterialConfig
from hash3d.render.mesh_antialias import antialias
from hash3d.render.mesh_raster import project_vertices, rasterize_mesh
from hash3d.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from hash3d.scene import HashGridConfig
from hash3d.scene.mesh_ops import laplacian_smoothness, normal_consistency, unique_edges, vertex_normals
from hash3d.scene.tetrahedra_sdf_grid import TetrahedraSDFGrid, TetrahedraSDFGridConfig


def square_in_view(offset: float):
    """A square of side 1 facing a camera at distance 2 (fovy 60, 32x32), shifted sideways by `offset`."""
    vertices = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]], dtype=torch.float64)
    vertices = vertices + torch.tensor([offset, 0.0, 0.0], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    viewmats = torch.eye(4, dtype=torch.float64)[None].clone()
    viewmats[0, 2, 3] = 2.0
    Ks = intrinsics(torch.tensor([60.0]), 32, 32).double()
    return vertices, faces, viewmats, Ks


@pytest.mark.parametrize("offset", [0.0, 0.013, 0.031])
def test_antialiased_coverage_is_the_projected_area(offset):
    vertices, faces, viewmats, Ks = square_in_view(offset)
    vertices.requires_grad_()
    _, alpha, meta = rasterize_mesh(vertices, faces, viewmats, Ks, 32, 32, colors=torch.ones(4, 1, dtype=torch.float64),
                                    backend="torch")  # fmt: skip
    pixels, _ = project_vertices(vertices, viewmats, Ks)
    smooth = antialias(alpha, meta.face_id, pixels, faces)
    side = float((pixels[0, 1, 0] - pixels[0, 0, 0]).detach())  # the square's side in pixels
    area = float(smooth.detach().sum())
    assert abs(area - side * side) < 0.02 * side * side
    assert abs(float(alpha.sum()) - side * side) > abs(area - side * side) or offset == 0.0
    # the silhouette moves with the vertices: pushing the square right moves coverage right
    columns = torch.arange(32, dtype=torch.float64)
    centre_of_mass = (smooth[0, :, :, 0].sum(0) * columns).sum() / smooth.sum()
    (grad,) = torch.autograd.grad(centre_of_mass, vertices)
    assert grad[:, 0].sum() > 0


def test_mesh_renderer_images_and_gradients():
    cfg = TetrahedraSDFGridConfig(radius=1.0, isosurface_resolution=16, pos_encoding_config=HashGridConfig(n_levels=4, log2_hashmap_size=12))
    geometry = TetrahedraSDFGrid(cfg)
    c2w = orbit_c2w(torch.tensor([20.0, -10.0]), torch.tensor([0.0, 120.0]), torch.tensor([3.0, 3.0]))
    renderer = MeshRenderer(MeshRendererConfig(backend="torch"))
    background = torch.tensor([0.0, 0.0, 1.0])
    out = renderer(geometry, c2w, torch.tensor([40.0, 40.0]), 32, 32, background=background)
    inside = out.opacity[..., 0] > 0.999
    outside = out.opacity[..., 0] < 1e-6
    assert inside.any() and outside.any()
    assert torch.allclose(out.rgb[outside], background.expand(int(outside.sum()), 3))
    assert torch.allclose(out.rgb[inside], out.rgb_fg[inside])
    # albedo where covered: the texture field at the surface points
    # normals of the ball point away from its centre, towards the camera
    centre = geometry.isosurface_bbox.mean(0)
    mesh = out.mesh
    normals = vertex_normals(mesh.vertices, mesh.faces)
    assert ((normals * (mesh.vertices - centre)).sum(-1) > 0).float().mean() > 0.99
    camera = c2w[:, None, None, :3, 3]
    facing = (out.normal * (camera - centre)).sum(-1)
    assert (facing[inside] > 0).all()
    (out.rgb.sum() + out.opacity.sum()).backward()
    assert geometry.sdf.grad.abs().sum() > 0 and geometry.deformation.grad.abs().sum() > 0
    assert geometry.encoding.table.grad.abs().sum() > 0


def test_mesh_regularisers_against_direct_formulas():
    # a flat grid of 3x3 vertices: normal consistency 0, Laplacian only at the border
    xs = torch.tensor([0.0, 1.0, 2.0])
    vertices = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    vertices = torch.cat([vertices, torch.zeros(9, 1)], -1)
    faces = []
    for i in range(2):
        for j in range(2):
            a, b, c, d = 3 * i + j, 3 * (i + 1) + j, 3 * (i + 1) + j + 1, 3 * i + j + 1
            faces += [[a, b, c], [a, c, d]]
    faces = torch.tensor(faces)
    assert float(normal_consistency(vertices, faces)) == pytest.approx(0.0, abs=1e-7)
    edges = unique_edges(faces)
    assert edges.shape[0] == 16
    expected = 0.0
    for i in range(9):
        nbrs = [int(b) if int(a) == i else int(a) for a, b in edges.tolist() if i in (a, b)]
        expected += float((len(nbrs) * vertices[i] - vertices[nbrs].sum(0)).norm())
    assert float(laplacian_smoothness(vertices, faces)) == pytest.approx(expected / 9)
    # bend one vertex out of the plane: the normals disagree
    bent = vertices.clone()
    bent[4, 2] = 1.0
    assert float(normal_consistency(bent, faces)) > 0.05


def test_spherical_harmonics_are_orthonormal():
    dirs = torch.nn.functional.normalize(torch.randn(400000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    basis = spherical_harmonics(dirs, 4)
    gram = 4 * math.pi * basis.T @ basis / dirs.shape[0]
    assert torch.allclose(gram, torch.eye(16), atol=0.03)


def test_environment_map_depends_on_direction():
    env = NeuralEnvironmentMapBackground()
    torch.nn.init.normal_(env.network[0].weight)
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    colors = env(dirs)
    assert colors.shape == (2, 4, 4, 3) and (colors > 0).all() and (colors < 1).all()
    assert not torch.allclose(colors[0, 0, 0], colors[1, 3, 3])


def test_magic3d_light_lies_above_the_view_within_its_cone():
    cfg = RandomCameraConfig(light_sample_strategy="magic3d", batch_size=256, light_distance_range=(0.8, 1.5))
    batch = RandomCameraSampler(cfg, seed=3).sample(0)
    direction = torch.nn.functional.normalize(batch.camera_positions - 0, dim=-1)
    dist = batch.light_positions.norm(dim=-1)
    cos = (torch.nn.functional.normalize(batch.light_positions, dim=-1) * direction).sum(-1)
    assert (dist > 0.8 - 1e-5).all() and (dist < 1.5 + 1e-5).all()
    # elevation above the camera-local xy plane in [30°, 90°]: angle to the camera direction at most 60°
    assert (cos >= math.cos(math.radians(60)) - 1e-5).all() and cos.min() < 0.6
    # the two uniforms behind it: Φ of standard normal draws
    light = magic3d_light(torch.tensor([[0.0, -2.0, 0.0]]), torch.zeros(1, 3), torch.tensor([1.0]))
    assert torch.allclose(light.norm(dim=-1), torch.tensor([1.0]))


def test_soft_shading_draws_the_light_split():
    material = DiffuseWithPointLight(MaterialConfig(ambient_only_steps=0, diffuse_prob=1.0, textureless_prob=0.0, soft_shading=True))
    import random

    rng = random.Random(0)
    shadings = [material.shading(10, True, torch.zeros(3), rng=rng) for _ in range(20)]
    ambient = [float(s.ambient) for s in shadings]
    assert all(abs(float(s.ambient) + float(s.diffuse) - 1) < 1e-9 for s in shadings)
    assert len(set(ambient)) == 20 and 0 < min(ambient) and max(ambient) < 1
    evaluation = material.shading(10, False, torch.zeros(3))
    assert torch.allclose(torch.as_tensor(evaluation.ambient), torch.tensor([0.1, 0.1, 0.1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mesh_renderer_on_cuda_matches_the_torch_backend():
    cfg = TetrahedraSDFGridConfig(radius=1.0, isosurface_resolution=32)
    geometry = TetrahedraSDFGrid(cfg, device="cuda")
    c2w = orbit_c2w(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([3.0])).cuda()
    fovy = torch.tensor([40.0], device="cuda")
    fast = MeshRenderer(MeshRendererConfig(backend="auto"))(geometry, c2w, fovy, 128, 128)
    slow = MeshRenderer(MeshRendererConfig(backend="torch"))(geometry, c2w, fovy, 128, 128)
    agree = (fast.opacity - slow.opacity).abs() < 1e-3
    assert agree.float().mean() > 0.99
    with torch.autocast("cuda", dtype=torch.float16):
        out = MeshRenderer(MeshRendererConfig(backend="auto"))(geometry, c2w, fovy, 128, 128)
    out.rgb.float().sum().backward()
    assert torch.isfinite(geometry.sdf.grad).all()


def test_fixed_geometry_trains_only_the_texture():
    cfg = TetrahedraSDFGridConfig(radius=1.0, isosurface_resolution=8, fix_geometry=True,
                                  pos_encoding_config=HashGridConfig(n_levels=2, log2_hashmap_size=10))  # fmt: skip
    geometry = TetrahedraSDFGrid(cfg)
    names = {n for n, _ in geometry.named_parameters()}
    assert not any(n.startswith(("sdf", "deformation")) for n in names) and "encoding.table" in names
    assert {"sdf", "deformation", "isosurface_bbox"} <= set(geometry.state_dict())
    # deformation moves a vertex by at most half a cube side (2/R in the unit cube) times the box size
    free = TetrahedraSDFGrid(TetrahedraSDFGridConfig(radius=1.0, isosurface_resolution=8))
    with torch.no_grad():
        free.deformation.fill_(100.0)
    moved = free.grid_positions() - (free.isosurface_bbox[0] + free.grid_vertices * 2.0)
    assert torch.allclose(moved.abs().max(), torch.tensor(2.0 / 8), atol=1e-5)


def test_last_picks_the_newest_trial(tmp_path):
    from hash3d.config import ConfigError
    from hash3d.systems.convert import resolve_last

    for name in ("cat@20260101-000000", "cat@20260301-000000", "dog@20270101-000000", "cat@20260201-000000"):
        (tmp_path / name / "ckpts").mkdir(parents=True)
        (tmp_path / name / "ckpts" / "last.ckpt").write_bytes(b"")
    (tmp_path / "cat@20260401-000000").mkdir()  # newest, but holds no checkpoint
    assert resolve_last(f"{tmp_path}/cat@LAST/ckpts/last.ckpt") == tmp_path / "cat@20260301-000000" / "ckpts" / "last.ckpt"
    assert resolve_last(f"{tmp_path}/LAST/ckpts/last.ckpt") == tmp_path / "dog@20270101-000000" / "ckpts" / "last.ckpt"
    with pytest.raises(ConfigError, match="no folder"):
        resolve_last(f"{tmp_path}/fox@LAST/ckpts/last.ckpt")


def squares_in_view(offset: float):
    """A square of side 0.8 at camera distance 1.5 (colour 1) inside a square of side 1.6 at distance 2 (colour 0),
    the front one shifted sideways by `offset`; one camera, fovy 60, 32x32."""
    unit = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]], dtype=torch.float64)
    front = unit * 0.8 + torch.tensor([offset, 0.0, -0.5], dtype=torch.float64)
    vertices = torch.cat([front, unit * 1.6])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    colors = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0]], dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64)[None].clone()
    viewmats[0, 2, 3] = 2.0
    Ks = intrinsics(torch.tensor([60.0]), 32, 32).double()
    return vertices, faces, colors, viewmats, Ks


def front_coverage(vertices, faces, colors, viewmats, Ks):
    image, _, meta = rasterize_mesh(vertices, faces, viewmats, Ks, 32, 32, colors=colors, backend="torch")
    pixels, _ = project_vertices(vertices, viewmats, Ks)
    return image, antialias(image, meta.face_id, pixels, faces, meta.depth), pixels


@pytest.mark.parametrize("offset", [0.0, 0.011, 0.029, 0.047])
def test_occlusion_edges_coverage_is_the_projected_area(offset):
    vertices, faces, colors, viewmats, Ks = squares_in_view(offset)
    hard, smooth, pixels = front_coverage(vertices, faces, colors, viewmats, Ks)
    side = float(pixels[0, 1, 0] - pixels[0, 0, 0])  # the front square's side in pixels (about 14.8)
    assert 14.0 < side < 16.0
    area = float(smooth.sum())
    assert abs(area - side * side) < 0.01 * side * side
    assert abs(float(hard.sum()) - side * side) > abs(area - side * side)
    # the back square's outer silhouette is colour 0 against a colour 0 background: only the occlusion edges blend
    assert not torch.equal(smooth, hard)


def test_occlusion_edges_need_depth_to_blend():
    vertices, faces, colors, viewmats, Ks = squares_in_view(0.029)
    image, _, meta = rasterize_mesh(vertices, faces, viewmats, Ks, 32, 32, colors=colors, backend="torch")
    pixels, _ = project_vertices(vertices, viewmats, Ks)
    assert torch.equal(antialias(image, meta.face_id, pixels, faces), image)
    message = re.escape("expected depth [C, H, W] or [C, H, W, 1] = [1, 32, 32(, 1)]; got (32, 32)")
    with pytest.raises(ValueError, match=message):
        antialias(image, meta.face_id, pixels, faces, meta.depth[0, ..., 0])


def grid_mesh(n: int, tilt: float):
    """An n x n grid of quads (2 triangles each) spanning [-0.7, 0.7]^2, tilted about the y axis by `tilt` radians."""
    s = torch.linspace(-0.7, 0.7, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(s, s, indexing="ij")
    vertices = torch.stack([x * math.cos(tilt), y, x * math.sin(tilt)], -1).reshape(-1, 3)
    idx = torch.arange((n + 1) * (n + 1)).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return vertices, faces


@pytest.mark.parametrize("tilt", [0.0, 0.4])
def test_shared_edges_of_one_surface_are_not_blended(tilt):
    vertices, faces = grid_mesh(6, tilt)
    viewmats = torch.eye(4, dtype=torch.float64)[None].clone()
    viewmats[0, 2, 3] = 2.0
    Ks = intrinsics(torch.tensor([60.0]), 32, 32).double()
    _, _, meta = rasterize_mesh(vertices, faces, viewmats, Ks, 32, 32, colors=vertices, backend="torch")
    pixels, _ = project_vertices(vertices, viewmats, Ks)
    image = torch.rand(1, 32, 32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    smooth = antialias(image, meta.face_id, pixels, faces, meta.depth)
    covered = meta.face_id >= 0
    padded = torch.nn.functional.pad(covered.float(), (1, 1, 1, 1))
    interior = covered & (padded[:, :-2, 1:-1] > 0) & (padded[:, 2:, 1:-1] > 0) & (padded[:, 1:-1, :-2] > 0)
    interior &= padded[:, 1:-1, 2:] > 0
    crossings = (meta.face_id[:, :, 1:] != meta.face_id[:, :, :-1]) & covered[:, :, 1:] & covered[:, :, :-1]
    assert interior.sum() > 100 and crossings.sum() > 30  # many pixel pairs straddle a shared edge
    assert torch.equal(smooth[interior], image[interior])
    assert not torch.equal(smooth[~interior & covered], image[~interior & covered])  # the outer silhouette blends


def test_occlusion_edge_gradient_matches_finite_differences():
    vertices, faces, colors, viewmats, Ks = squares_in_view(0.029)
    x = vertices[:4, 0].clone().requires_grad_()

    def coverage(xs):
        moved = torch.cat([torch.stack([xs, vertices[:4, 1], vertices[:4, 2]], -1), vertices[4:]])
        return front_coverage(moved, faces, colors, viewmats, Ks)[1].sum()

    (grad,) = torch.autograd.grad(coverage(x), x)
    eps = 1e-5
    for i in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[i] = eps
        with torch.no_grad():
            fd = (coverage(x.detach() + step) - coverage(x.detach() - step)) / (2 * eps)
        assert abs(float(grad[i])) > 1.0
        assert abs(float(grad[i]) - float(fd)) < 1e-5 * abs(float(fd))
    # right corners widen the square, left ones narrow it, by about the square's height in pixels times px/unit
    assert grad[1] > 0 and grad[2] > 0 and grad[0] < 0 and grad[3] < 0


def test_closed_mesh_silhouette_over_the_mesh_is_blended():
    # a closed cube (colour 1) in front of a larger square (colour 0): its outline is made of edges between the
    # front face and back-facing side faces, no boundary edges, and is blended like a boundary
    corners = torch.tensor([[x, y, z] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)]).double()
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    cube_faces = torch.tensor([tri for a, b, c, d in quads for tri in ([a, b, c], [a, c, d])])
    back = torch.tensor([[-0.8, -0.8, 1.0], [0.8, -0.8, 1.0], [0.8, 0.8, 1.0], [-0.8, 0.8, 1.0]], dtype=torch.float64)
    back_faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    for offset in (0.0, 0.023):
        cube = corners * 0.6 + torch.tensor([offset, 0.0, -0.3], dtype=torch.float64)
        vertices, faces = torch.cat([cube, back]), torch.cat([cube_faces, back_faces + 8])
        colors = torch.cat([torch.ones(8, 1), torch.zeros(4, 1)]).double()
        viewmats = torch.eye(4, dtype=torch.float64)[None].clone()
        viewmats[0, 2, 3] = 2.0
        Ks = intrinsics(torch.tensor([60.0]), 32, 32).double()
        hard, smooth, pixels = front_coverage(vertices, faces, colors, viewmats, Ks)
        side = float(pixels[0, 1, 0] - pixels[0, 0, 0])  # the cube's near face, which outlines it
        assert abs(float(smooth.sum()) - side * side) < 0.01 * side * side
        assert abs(float(hard.sum()) - side * side) > abs(float(smooth.sum()) - side * side)
