"""Isosurface extraction and mesh files: geometry against analytic fields, files reloaded with trimesh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hash3d.export import NoSurfaceError, bake_texture, export_mesh, extract_mesh, rasterize_uv, unwrap_uv
from hash3d.scene import FieldOutput, HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig
from hash3d.scene.isosurface import Mesh

trimesh = pytest.importorskip("trimesh")


class Balls(nn.Module):
    """Density 25 + 50·(a − |p − c|)/a around each ball (= 25 exactly on the surface), albedo (p + 1)/2."""

    def __init__(self, balls=(((0.0, 0.0, 0.0), 0.6),), radius: float = 1.0):
        super().__init__()
        self.radius = radius
        self.balls = balls

    def forward_density(self, points):
        d = torch.stack([25 + 50 * (a - (points - torch.tensor(c)).norm(dim=-1)) / a for c, a in self.balls], -1)
        return d.amax(-1, keepdim=True)

    def forward(self, points, with_normal=False):
        return FieldOutput(self.forward_density(points), ((points + 1) / 2).clamp(0, 1))


def albedo(points: np.ndarray) -> np.ndarray:
    return np.clip((points + 1) / 2, 0, 1)


def test_sphere_mesh_geometry_and_colours():
    mesh = extract_mesh(Balls(), resolution=40, threshold=25.0)
    v = mesh.vertices.numpy()
    assert mesh.faces.dtype == torch.int64 and mesh.vertices.dtype == torch.float32
    radii = np.linalg.norm(v, axis=1)
    assert np.abs(radii - 0.6).max() < 0.01  # the second pass samples 2.2× finer than the whole box
    tm = trimesh.Trimesh(v, mesh.faces.numpy(), process=False)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.03)  # positive: faces point outwards
    np.testing.assert_allclose(mesh.colors.numpy(), albedo(v), atol=1e-5)


def test_small_components_are_removed():
    field = Balls((((-0.2, 0.0, 0.0), 0.6), ((0.75, 0.75, 0.75), 0.06)))
    kept = extract_mesh(field, resolution=48, threshold=25.0, coarse_to_fine=False)
    both = extract_mesh(field, resolution=48, threshold=25.0, coarse_to_fine=False, min_component_fraction=0.0)
    assert both.n_faces > kept.n_faces
    assert kept.vertices.max(0).values.max() < 0.62  # only the big ball is left
    assert both.vertices.max(0).values.min() > 0.65
    assert int(kept.faces.max()) == kept.n_vertices - 1  # unused vertices dropped


def test_no_surface_is_reported_with_a_working_suggestion():
    torch.manual_seed(0)
    grid = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    field = ImplicitVolume(ImplicitVolumeConfig(radius=1.0, pos_encoding_config=grid, mlp_network_config=MLPConfig(n_neurons=16)))
    # a fresh field is the magic3d blob: softplus(10·(1 − |x|/0.5)) < 11, so the default threshold 25 finds nothing
    with pytest.raises(NoSurfaceError, match=r"no surface at isosurface threshold 25.*try threshold=") as err:
        extract_mesh(field, resolution=24)
    suggestion = err.value.suggested_threshold
    assert suggestion is not None and 0 < suggestion < 25
    mesh = extract_mesh(field, resolution=24, threshold=suggestion)
    assert mesh.n_faces > 100


def test_rasterize_uv_covers_the_square():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    face_id, bary = rasterize_uv(uv, faces, 16, max_elements=50)  # forces several chunks
    assert (face_id >= 0).all()
    # barycentrics reproduce each texel centre's uv (row 0 at the top: v = 1 − (i + 0.5)/S)
    rec = (bary[..., None] * uv[faces[face_id]]).sum(-2)
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    expected = torch.stack([(j + 0.5) / 16, 1 - (i + 0.5) / 16], -1)
    torch.testing.assert_close(rec, expected, atol=1e-5, rtol=0)


def _loaded_colors_vs_field(loaded, up_axis="y"):
    """Colours trimesh reads back at each vertex vs the field's albedo at that vertex (world frame)."""
    verts = np.asarray(loaded.vertices)
    world = np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], -1) if up_axis == "y" else verts  # y-up back to z-up
    visual = loaded.visual.to_color() if hasattr(loaded.visual, "to_color") else loaded.visual
    colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
    return np.abs(colors - albedo(world))


def test_obj_with_baked_texture_loads_in_trimesh(tmp_path):
    field = Balls()
    mesh = extract_mesh(field, resolution=24, threshold=25.0)
    files = export_mesh(mesh, tmp_path / "model.obj", texture_size=256, field=field)
    assert [f.name for f in files] == ["model.obj", "model.mtl", "model_albedo.png"]
    assert "map_Kd model_albedo.png" in (tmp_path / "model.mtl").read_text()
    loaded = trimesh.load(tmp_path / "model.obj", process=False, force="mesh")
    assert len(loaded.faces) == mesh.n_faces
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and loaded.visual.material.image is not None
    assert loaded.visual.material.image.size == (256, 256)
    err = _loaded_colors_vs_field(loaded)
    assert err.mean() < 0.02 and np.percentile(err, 99) < 0.08
    # y-up frame: the world z extent became the file's y extent
    np.testing.assert_allclose(loaded.vertices[:, 1].max(), mesh.vertices[:, 2].max().item(), atol=1e-5)


def test_obj_vertex_colours_glb_and_ply(tmp_path):
    field = Balls()
    mesh = extract_mesh(field, resolution=20, threshold=25.0, coarse_to_fine=False)
    obj = export_mesh(mesh, tmp_path / "plain.obj", up_axis="z")  # no field: vertex colours
    assert len(obj) == 1
    loaded = trimesh.load(obj[0], process=False, force="mesh")
    np.testing.assert_allclose(loaded.vertices, mesh.vertices.numpy(), atol=1e-5)
    assert _loaded_colors_vs_field(loaded, "z").max() < 0.01

    (glb,) = export_mesh(mesh, tmp_path / "model.glb", texture_size=128, field=field)
    scene = trimesh.load(glb, process=False)
    geom = list(scene.geometry.values())[0] if isinstance(scene, trimesh.Scene) else scene
    assert len(geom.faces) > 0 and isinstance(geom.visual, trimesh.visual.TextureVisuals)
    assert _loaded_colors_vs_field(geom).mean() < 0.03

    (ply,) = export_mesh(mesh, tmp_path / "model.ply")
    loaded = trimesh.load(ply, process=False)
    assert len(loaded.faces) == mesh.n_faces
    assert _loaded_colors_vs_field(loaded).max() < 0.01


def test_bad_requests(tmp_path):
    mesh = Mesh(torch.zeros(3, 3), torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no faces"):
        export_mesh(mesh, tmp_path / "a.obj")
    tri = Mesh(torch.eye(3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="unknown mesh format"):
        export_mesh(tri, tmp_path / "a.stl")
    with pytest.raises(ValueError, match="obj-mtl"):
        export_mesh(tri, tmp_path / "a.obj", fmt="obj-mtl")
    unwrapped = unwrap_uv(tri, 32)
    baked = bake_texture(unwrapped, lambda p: torch.full((p.shape[0], 3), 0.25), 32)
    assert baked.texture.shape == (32, 32, 3)
    torch.testing.assert_close(baked.texture, torch.full((32, 32, 3), 0.25))  # empty texels filled too


def test_exporter_component_writes_threestudio_layout(tmp_path):
    from hash3d.config.registry import build
    from hash3d.export import MeshExporterConfig

    grid = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    field = ImplicitVolume(
        ImplicitVolumeConfig(
            radius=1.0, pos_encoding_config=grid, mlp_network_config=MLPConfig(n_neurons=16),
            isosurface_resolution=20, isosurface_threshold=5.0,
        )
    )
    exporter = build("exporter", "mesh-exporter", MeshExporterConfig(texture_size=64))
    files = exporter(field, tmp_path / "it0-export")
    assert sorted(f.name for f in files) == ["model.mtl", "model.obj", "model_albedo.png"]
    loaded = trimesh.load(files[0], process=False, force="mesh")
    assert len(loaded.faces) > 50
