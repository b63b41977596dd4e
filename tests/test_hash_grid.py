"""Hash-grid encoding against a slow per-level, per-corner reference written independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hash3d.scene import HashGrid, HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig, grid_levels

torch.set_num_threads(1)

SMALL = HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)


def reference_encode(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig) -> torch.Tensor:
    """Slow reference: one level and one corner at a time; the hash in numpy uint32 arithmetic (as instant-NGP)."""
    T = 2**config.log2_hashmap_size
    x = x.clamp(0, 1)
    outs, offset = [], 0
    for level in range(config.n_levels):
        n_cells = int(math.floor(config.base_resolution * config.per_level_scale**level + 1e-6))
        n_verts = n_cells + 1
        dense = n_verts**3 <= T
        size = n_verts**3 if dense else T
        pos = x * n_cells
        low = pos.detach().floor().clamp(max=n_cells - 1)
        frac = pos - low
        low = low.long().numpy()
        acc = 0
        for corner in range(8):
            bits = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
            c = low + np.array(bits)
            if dense:
                idx = c[:, 0] + c[:, 1] * n_verts + c[:, 2] * n_verts * n_verts
            else:
                cu = c.astype(np.uint32)
                h = cu[:, 0] * np.uint32(1) ^ cu[:, 1] * np.uint32(2654435761) ^ cu[:, 2] * np.uint32(805459861)
                idx = (h % np.uint32(T)).astype(np.int64)
            w = torch.ones(x.shape[0], dtype=x.dtype)
            for axis in range(3):
                w = w * (frac[:, axis] if bits[axis] else 1 - frac[:, axis])
            acc = acc + w[:, None] * table[offset + torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        outs.append(acc)
        offset += size
    return torch.cat(outs, dim=1)


def test_default_levels_follow_threestudio():
    levels = grid_levels(HashGridConfig())
    assert [lv.resolution for lv in levels][:3] == [16, 23, 33]
    assert levels[-1].resolution == 4096
    assert [lv.dense for lv in levels] == [True] * 5 + [False] * 11
    assert all(lv.size == 2**19 for lv in levels[5:])
    assert levels[4].size == 71**3
    assert HashGrid().n_output_dims == 32


def test_init_is_uniform_small():
    grid = HashGrid(SMALL)
    assert grid.table.abs().max() <= 1e-4
    assert grid.table.std() > 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_forward_and_gradients(seed):
    torch.manual_seed(seed)
    grid = HashGrid(SMALL)
    assert [lv.dense for lv in grid.levels] == [True, True, False, False, False, False]
    with torch.no_grad():
        grid.table.normal_()
    x = torch.cat([torch.rand(300, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.25, 0.0], [0.5, 0.5, 0.5]])])
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    table2 = grid.table.detach().clone().requires_grad_(True)

    ours = grid(x1)
    ref = reference_encode(x2, table2, SMALL)
    assert ours.shape == (x.shape[0], SMALL.n_levels * SMALL.n_features_per_level)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    cot = torch.randn_like(ours)
    g_table, g_x = torch.autograd.grad(ours, (grid.table, x1), cot)
    r_table, r_x = torch.autograd.grad(ref, (table2, x2), cot)
    torch.testing.assert_close(g_table, r_table, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_x, r_x, rtol=1e-4, atol=1e-4)


def test_dense_level_gives_every_vertex_its_own_entry():
    cfg = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=4)
    grid = HashGrid(cfg)
    assert grid.levels[0].dense and grid.levels[0].size == 125
    with torch.no_grad():
        grid.table.copy_(torch.arange(125.0)[:, None])
    ijk = torch.stack(torch.meshgrid(*[torch.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    out = grid(ijk.float() / 4).squeeze(-1)
    expected = (ijk[:, 0] + 5 * ijk[:, 1] + 25 * ijk[:, 2]).float()
    torch.testing.assert_close(out, expected)  # exact entry at each vertex, all 125 distinct


def test_hashed_level_wraps_vertices_into_the_table():
    cfg = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=16)
    grid = HashGrid(cfg)
    assert not grid.levels[0].dense and grid.levels[0].size == 256
    with torch.no_grad():
        grid.table.copy_(torch.arange(256.0)[:, None])
    ijk = torch.stack(torch.meshgrid(*[torch.arange(17)] * 3, indexing="ij"), -1).reshape(-1, 3)
    out = grid(ijk.float() / 16).squeeze(-1).round().long()
    c = ijk.numpy().astype(np.uint32)
    h = (c[:, 0] ^ c[:, 1] * np.uint32(2654435761) ^ c[:, 2] * np.uint32(805459861)) % np.uint32(256)
    assert torch.equal(out, torch.from_numpy(h.astype(np.int64)))
    assert out.unique().numel() <= 256 < ijk.shape[0]  # collisions are unavoidable


def test_shapes_empty_input_and_clamping():
    grid = HashGrid(SMALL)
    assert grid(torch.zeros(0, 3)).shape == (0, 12)
    inside = grid(torch.tensor([[0.0, 1.0, 0.5]]))
    outside = grid(torch.tensor([[-0.5, 1.7, 0.5]]))
    torch.testing.assert_close(inside, outside)


def test_second_derivatives_exist_for_analytic_normals():
    torch.manual_seed(0)
    grid = HashGrid(SMALL).double()
    with torch.no_grad():
        grid.table.normal_()
    x = (torch.rand(8, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: grid(p), (x,))
    (gx,) = torch.autograd.grad(grid(x).sum(), x, create_graph=True)
    (gt,) = torch.autograd.grad(gx.square().sum(), grid.table)
    assert gt.abs().sum() > 0


def test_compiles_without_graph_breaks():
    grid = HashGrid(SMALL)
    compiled = torch.compile(grid, fullgraph=True, backend="eager")
    x = torch.rand(50, 3)
    torch.testing.assert_close(compiled(x), grid(x))


def test_implicit_volume_density_blob_and_normals():
    torch.manual_seed(0)
    cfg = ImplicitVolumeConfig(pos_encoding_config=SMALL, mlp_network_config=MLPConfig(n_neurons=16, n_hidden_layers=2))
    field = ImplicitVolume(cfg)
    p = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [1.5, 1.5, 1.5]])
    d = field.forward_density(p)
    assert d.shape == (3, 1) and (d >= 0).all()
    assert d[0] > d[1] > d[2]  # the magic3d blob peaks at the centre
    out = field(p[:2] + 0.01, with_normal=True)
    assert out.albedo.shape == (2, 3) and ((out.albedo > 0) & (out.albedo < 1)).all()
    torch.testing.assert_close(out.normal.norm(dim=-1), torch.ones(2))
    # the blob dominates a fresh field: normals point away from the centre
    cosine = torch.nn.functional.cosine_similarity(out.normal, p[:2] + 0.01, dim=-1)
    assert cosine.min() > 0.9
    fd = ImplicitVolume(ImplicitVolumeConfig(pos_encoding_config=SMALL, mlp_network_config=cfg.mlp_network_config, normal_type="finite_difference"))
    fd.load_state_dict(field.state_dict())
    torch.testing.assert_close(fd(p[:2] + 0.01, with_normal=True).normal, out.normal, atol=2e-2, rtol=0)
    with torch.no_grad():
        out_ng = field(p[:2] + 0.01, with_normal=True)
    assert not out_ng.normal.requires_grad and not out_ng.density.requires_grad
    torch.testing.assert_close(out_ng.normal, out.normal)


def test_progressive_band_switches_levels_on_with_the_step():
    cfg = HashGridConfig(
        otype="ProgressiveBandHashGrid", n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
        base_resolution=4, per_level_scale=2.0, start_level=2, start_step=100, update_steps=50,
    )
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.normal_()
    x = torch.rand(20, 3)
    full = reference_encode(x, grid.table.detach(), cfg)
    for step, active in ((0, 2), (149, 2), (150, 3), (299, 5), (10_000, 6)):
        grid.update_step(step)
        out = grid(x)
        torch.testing.assert_close(out[:, : 2 * active], full[:, : 2 * active], rtol=1e-5, atol=1e-5)
        assert (out[:, 2 * active :] == 0).all()
    field = ImplicitVolume(ImplicitVolumeConfig(pos_encoding_config=cfg, mlp_network_config=MLPConfig(n_neurons=8)))
    field.update_step(0)
    assert int(field.encoding.level_mask.sum()) == 4
