"""Hash-grid encoding against a slow per-level, per-corner reference written independently here."""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from hash3d.scene import HashGrid, HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig, grid_levels


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


# ---- explicit density gradient (analytic normals without double backward) ----------------------------------------

F64 = torch.float64
BAND = HashGridConfig(
    otype="ProgressiveBandHashGrid", n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
    base_resolution=4, per_level_scale=2.0, start_level=3, start_step=0, update_steps=100,
)


def probe_unit_points(n: int, seed: int) -> torch.Tensor:
    """Points of the unit cube's neighbourhood: random (some outside), on grid vertices and cell faces of every
    SMALL level (coordinates k/128, exact in binary), on the faces 0 and 1, and at the corners."""
    g = torch.Generator().manual_seed(seed)
    random = torch.rand(n, 3, generator=g, dtype=F64) * 1.4 - 0.2
    vertices = torch.randint(0, 129, (n, 3), generator=g).to(F64) / 128
    one_axis = torch.rand(n, 3, generator=g, dtype=F64)
    axis = torch.randint(0, 3, (n,), generator=g)
    one_axis[torch.arange(n), axis] = vertices[:, 0]  # a cell boundary along one axis only
    faces = torch.rand(n, 3, generator=g, dtype=F64)
    faces[torch.arange(n), axis] = (torch.arange(n) % 2).to(F64)  # on the lower or upper face
    outside_one = torch.rand(n, 3, generator=g, dtype=F64)
    outside_one[torch.arange(n), axis] = torch.where(torch.arange(n) % 2 == 0, -0.1, 1.1).to(F64)
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.5], [1.2, 1.0, -0.3]], dtype=F64)
    return torch.cat([random, vertices, one_axis, faces, outside_one, corners])


def autograd_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """Per-point Jacobian [N, 3, C] of a pointwise map [N, 3] -> [N, C], one autograd.grad per output channel
    (create_graph, so the result can be differentiated again)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    out = fn(x)
    cols = [torch.autograd.grad(out[:, c].sum(), x, create_graph=True)[0] for c in range(out.shape[1])]
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("config", [SMALL, BAND], ids=["hash_grid", "progressive_band"])
def test_encoding_jacobian_matches_autograd(config):
    torch.manual_seed(0)
    grid = HashGrid(config).double()
    assert [lv.dense for lv in grid.levels] == [True, True, False, False, False, False]
    with torch.no_grad():
        grid.table.normal_()
    grid.update_step(100)  # band: 4 of 6 levels on
    x = probe_unit_points(60, seed=1).requires_grad_(True)
    jet = grid.forward_with_jacobian(x)
    assert jet.shape == (x.shape[0], 4, 12)
    ref_jac = autograd_jacobian(grid, x)
    torch.testing.assert_close(jet[:, 0], grid(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jet[:, 1:], ref_jac, rtol=1e-12, atol=1e-12)
    # spot checks of the cases the Jacobian spells out: outside along an axis -> 0 along it; on the upper face the
    # last cell's inner slope (nonzero for a random table); masked levels -> 0
    outside = (x < 0) | (x > 1)
    assert (jet[:, 1:].transpose(1, 2)[outside[:, None, :].expand(-1, 12, -1)] == 0).all()
    on_upper = (x == 1).any(-1) & ~outside.any(-1)
    assert on_upper.sum() > 10 and (jet[on_upper, 1:].abs().sum((1, 2)) > 0).all()
    if config.otype != "HashGrid":
        assert (jet[:, :, 8:] == 0).all() and (jet[:, 1:, :8].abs().sum() > 0)

    # first-order autograd of the explicit Jacobian == double backward of the encoding
    v, w = torch.randn_like(ref_jac), torch.randn_like(jet[:, 0])
    ours = torch.autograd.grad((jet[:, 1:] * v).sum() + (jet[:, 0] * w).sum(), (grid.table, x))
    ref = torch.autograd.grad((ref_jac * v).sum() + (grid(x) * w).sum(), (grid.table, x))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_encoding_jacobian_compiles_without_graph_breaks():
    grid = HashGrid(SMALL)
    compiled = torch.compile(grid.forward_with_jacobian, fullgraph=True, backend="eager")
    x = torch.rand(50, 3)
    torch.testing.assert_close(compiled(x), grid.forward_with_jacobian(x))


def field64(mlp: MLPConfig, encoding: HashGridConfig = SMALL, seed: int = 0, **kw) -> ImplicitVolume:
    torch.manual_seed(seed)
    field = ImplicitVolume(ImplicitVolumeConfig(radius=2.0, pos_encoding_config=encoding, mlp_network_config=mlp, **kw)).double()
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.5)  # a field far from the blob alone: ReLUs on and off, varied slopes
    field.update_step(100)
    return field


def reference_density_gradient(field: ImplicitVolume, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The former analytic path: ∂σ/∂x by torch.autograd.grad with create_graph (double backward when trained)."""
    x = points if points.requires_grad else points.detach().requires_grad_(True)
    density = field.forward_density(x)
    (grad,) = torch.autograd.grad(density, x, torch.ones_like(density), create_graph=True)
    return density, grad


def probe_world_points(radius: float, seed: int) -> torch.Tensor:
    """probe_unit_points mapped to [−r, r]³ (exactly: r = 2), plus the centre and points well outside."""
    p = probe_unit_points(40, seed) * (2 * radius) - radius
    g = torch.Generator().manual_seed(seed + 7)
    far = (torch.rand(20, 3, generator=g, dtype=F64) * 2 - 1) * 2 * radius
    return torch.cat([p, far, torch.zeros(1, 3, dtype=F64)])


FIELD_CASES = [
    pytest.param(act, dens, bias, id=f"{act}-{dens}-{bias}")
    for act in ("relu", "silu")
    for dens in ("softplus", "shifted_softplus", "exp")
    for bias in ("blob_magic3d", "blob_dreamfusion", "none")
]


@pytest.mark.parametrize("activation, density_activation, density_bias", FIELD_CASES)
def test_density_gradient_matches_autograd(activation, density_activation, density_bias):
    field = field64(
        MLPConfig(n_neurons=16, n_hidden_layers=2, activation=activation),
        density_activation=density_activation, density_bias=density_bias,
    )
    p = probe_world_points(2.0, seed=3)
    density, grad, features = field.density_and_gradient(p, with_features=True)
    ref_density, ref_grad = reference_density_gradient(field, p)
    torch.testing.assert_close(density, ref_density, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10 * ref_grad.abs().max().item())
    torch.testing.assert_close(features, field(p).features, rtol=1e-12, atol=1e-12)
    assert (ref_grad.abs().sum(-1) > 0).float().mean() > 0.5  # not a vacuous comparison


@pytest.mark.parametrize(
    "mlp, encoding, extra",
    [
        (MLPConfig(n_neurons=16, bias=True), SMALL, {}),
        (MLPConfig(n_neurons=16, activation="silu", bias=True), BAND, {}),
        (MLPConfig(n_neurons=16), BAND, {"density_activation": "exp"}),
        # raw density above 15 near the centre: trunc_exp's clamped gradient
        (MLPConfig(n_neurons=16), SMALL, {"density_activation": "exp", "density_blob_scale": 25.0}),
    ],
    ids=["relu-bias", "silu-bias-band", "relu-exp-band", "relu-exp-clamped"],
)
def test_density_gradient_matches_autograd_more_configs(mlp, encoding, extra):
    field = field64(mlp, encoding, **extra)
    p = probe_world_points(2.0, seed=4)
    density, grad, _ = field.density_and_gradient(p)
    ref_density, ref_grad = reference_density_gradient(field, p)
    torch.testing.assert_close(density, ref_density, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10 * ref_grad.abs().max().item())
    if "density_blob_scale" in extra:
        raw = torch.log(density)  # exp activation
        assert (raw > 15).any() and (raw < 15).any()


@pytest.mark.parametrize(
    "mlp, encoding, extra",
    [
        pytest.param(MLPConfig(n_neurons=16, activation=a), SMALL, {"density_activation": d, "density_bias": b}, id=case.id)
        for case in FIELD_CASES
        for a, d, b in [case.values]
    ]
    + [
        pytest.param(MLPConfig(n_neurons=16, bias=True), BAND, {}, id="relu-bias-band"),
        pytest.param(
            MLPConfig(n_neurons=16, activation="silu", n_hidden_layers=1), BAND, {"density_activation": "exp"},
            id="silu-1layer-band-exp",
        ),
        pytest.param(
            MLPConfig(n_neurons=16), SMALL, {"density_activation": "exp", "density_blob_scale": 25.0}, id="relu-exp-clamped"
        ),
    ],
)
def test_normal_loss_gradients_match_double_backward(mlp, encoding, extra):
    """d/dθ and d/dpoints of sum(normal·v) + sum(σ·w) + sum(albedo·u): explicit path vs double backward."""
    field = field64(mlp, encoding, **extra)
    p = probe_world_points(2.0, seed=5)
    g = torch.Generator().manual_seed(6)
    v, w, u = (torch.randn(p.shape[0], k, generator=g, dtype=F64) for k in (3, 1, 3))
    params = [field.encoding.table] + [prm for net in (field.density_network, field.feature_network) for prm in net.parameters()]
    assert len(params) == 1 + 2 * (mlp.n_hidden_layers + 1) * (2 if mlp.bias else 1)

    x = p.clone().requires_grad_(True)
    out = field(x, with_normal=True)
    loss = (out.normal * v).sum() + (out.density * w).sum() + (out.albedo * u).sum()
    ours = torch.autograd.grad(loss, params + [x])

    x_ref = p.clone().requires_grad_(True)
    density, grad = reference_density_gradient(field, x_ref)
    normal = -torch.nn.functional.normalize(grad, dim=-1)
    torch.testing.assert_close(out.normal, normal, rtol=1e-10, atol=1e-10)
    ref_loss = (normal * v).sum() + (density * w).sum() + (field(x_ref).albedo * u).sum()
    ref = torch.autograd.grad(ref_loss, params + [x_ref])
    # at the centre, double backward through the magic3d blob's norm gives NaN for the points; ours stays finite
    assert torch.isfinite(ours[-1]).all()
    if extra.get("density_bias", "blob_magic3d") == "blob_magic3d":
        assert torch.isnan(ref[-1][-1]).all()
        ours, ref = ours[:-1] + (ours[-1][:-1],), ref[:-1] + (ref[-1][:-1],)
    for a, b in zip(ours, ref):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


@pytest.mark.slow
def test_analytic_normals_under_no_grad_and_compile():
    field = field64(MLPConfig(n_neurons=16))
    p = probe_world_points(2.0, seed=8)
    with torch.no_grad():
        out = field(p, with_normal=True)
    assert not any(t.requires_grad for t in (out.density, out.albedo, out.normal, out.features))
    # first-order only: the training step (forward + backward) traces into one graph
    compiled = torch.compile(lambda q: field(q, with_normal=True), fullgraph=True, backend="aot_eager")
    x = p.clone().requires_grad_(True)
    got = compiled(x)
    (got.normal.sum() + got.density.sum()).backward()
    torch.testing.assert_close(got.normal, out.normal)
    assert field.encoding.table.grad is not None and x.grad is not None


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference"])
def test_normal_alone_equals_the_forward_normal_without_the_feature_network(normal_type):
    field = field64(MLPConfig(n_neurons=16, n_hidden_layers=2), normal_type=normal_type)
    p = torch.rand(40, 3, dtype=torch.float64) * 2 - 1
    calls = []
    hook = field.feature_network.register_forward_hook(lambda *args: calls.append(1))
    try:
        alone = field.normal(p)
        assert not calls  # the regulariser's pass at perturbed points needs no features
        full = field(p, with_normal=True).normal
    finally:
        hook.remove()
    assert calls
    assert torch.equal(alone, full)
    grads = []
    for n in (alone, full):
        field.zero_grad()
        (n * torch.linspace(-1, 1, n.numel(), dtype=n.dtype).view_as(n)).sum().backward(retain_graph=True)
        grads.append([None if q.grad is None else q.grad.clone() for q in field.parameters()])
    for a, b in zip(*grads):
        assert (a is None and (b is None or not b.any())) or torch.equal(a, b)


def test_normal_alone_refused_without_normals():
    from hash3d.config.errors import ConfigError

    field = field64(MLPConfig(n_neurons=8), normal_type="none")
    with pytest.raises(ConfigError, match="normal_type is 'none'"):
        field.normal(torch.zeros(2, 3, dtype=torch.float64))


# ---- mlp_precision: the networks' matrix products in half precision --------------------------------------------


def field32(precision: str, **kw) -> ImplicitVolume:
    field = field64(MLPConfig(n_neurons=16, n_hidden_layers=2), mlp_precision=precision, **kw).float()
    return field


@pytest.mark.parametrize("precision, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_mlps_run_their_products_in_half_and_stay_close(precision, dtype):
    """Every Linear of both networks runs in the asked dtype (autocast), the outputs come back float32 and near the
    float32 field's, and both networks and the table get finite gradients; the hash grid stays float32."""
    plain, half = field32("float32"), field32(precision)
    half.load_state_dict(plain.state_dict())
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
             for m in (*half.density_network, *half.feature_network) if isinstance(m, torch.nn.Linear)]
    enc_dtypes = []
    hooks.append(half.encoding.register_forward_hook(lambda mod, inp, out: enc_dtypes.append(out.dtype)))
    p = probe_world_points(2.0, seed=12).float()
    try:
        out = half(p, with_normal=True)
        density = half.forward_density(p)
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(produced == dtype for _, produced in seen)  # the module calls (the Jacobian path: below)
    ref = plain(p, with_normal=True)
    assert out.density.dtype == out.normal.dtype == out.albedo.dtype == density.dtype == torch.float32
    torch.testing.assert_close(out.density, ref.density, rtol=0.1, atol=0.1)
    torch.testing.assert_close(out.albedo, ref.albedo, rtol=0.05, atol=0.02)
    unit = ref.normal.norm(dim=-1) > 0.99  # where the density has a gradient to normalise
    assert unit.sum() >= 5 and (out.normal * ref.normal).sum(-1)[unit].min() > 0.95  # the same directions
    # the density with normals comes through mlp_with_jacobian (no module call): it too moved off float32
    assert not any(torch.equal(a, b) for a, b in ((out.density, ref.density), (out.albedo, ref.albedo)))
    assert enc_dtypes and all(d == torch.float32 for d in enc_dtypes)
    (out.density.sum() + out.albedo.sum() + out.normal.sum()).backward()
    for name, q in half.named_parameters():
        assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all(), name
    assert half.encoding.table.grad.abs().sum() > 0


def test_half_precision_mlps_recompute_to_the_same_values():
    """recompute_mlps re-runs the half-precision networks in the same precision: outputs and gradients unchanged."""
    a, b = field32("bfloat16"), field32("bfloat16", recompute_mlps=True)
    b.load_state_dict(a.state_dict())
    p = probe_world_points(2.0, seed=13).float()
    results = []
    for field in (a, b):
        out = field(p, with_normal=True)
        grads = torch.autograd.grad(out.density.sum() + out.normal.sum() + out.albedo.sum(), list(field.parameters()))
        results.append([out.density, out.normal, out.albedo, *grads])
    for x, y in zip(*results):
        assert torch.equal(x, y)


def test_mlp_precision_refuses_an_unknown_name():
    from pathlib import Path

    from hash3d.config.errors import ConfigError
    from hash3d.config.loader import load_config

    config = Path(__file__).resolve().parents[1] / "threestudio-hash3d" / "configs" / "stable-zero123.yaml"
    with pytest.raises(ConfigError, match="mlp_precision' must be one of 'float32', 'bfloat16', 'float16'; got 'fp8'"):
        load_config(config, ["system.geometry.mlp_precision=fp8"])


# ---- recompute_mlps: the MLPs' activations recomputed in the backward ------------------------------------------


def field_pair(normal_type: str, mlp: MLPConfig | None = None) -> tuple[ImplicitVolume, ImplicitVolume]:
    mlp = mlp or MLPConfig(n_neurons=16, n_hidden_layers=2)
    plain = field64(mlp, normal_type=normal_type)
    recompute = field64(mlp, normal_type=normal_type, recompute_mlps=True)
    recompute.load_state_dict(plain.state_dict())
    return plain, recompute


def count_checkpoints(monkeypatch) -> list[int]:
    """Calls of torch.utils.checkpoint in the field (one list entry per call)."""
    from hash3d.scene import implicit_volume

    calls: list[int] = []
    real = implicit_volume.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(implicit_volume, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("normal_type, n_checkpoints", [("analytic", 2 + 1 + 1), ("finite_difference", 2 + 1 + 1 + 1)])
def test_recompute_mlps_gives_the_same_outputs_and_gradients(monkeypatch, normal_type, n_checkpoints):
    """Bit for bit on CPU: forward with normals, the normal alone and a density query, d/dθ and d/dpoints."""
    p = probe_world_points(2.0, seed=9)
    g = torch.Generator().manual_seed(10)
    v, w, u, v2, w2 = (torch.randn(p.shape[0], k, generator=g, dtype=F64) for k in (3, 1, 3, 3, 1))
    calls = count_checkpoints(monkeypatch)
    results = []
    for field in field_pair(normal_type):
        calls.clear()
        x = p.clone().requires_grad_(True)
        out = field(x, with_normal=True)
        alone = field.normal(x.flip(0))
        density = field.forward_density(x * 0.5)
        loss = ((out.normal * v).sum() + (out.density * w).sum() + (out.albedo * u).sum() + (alone * v2).sum()
                + (density * w2).sum())
        grads = torch.autograd.grad(loss, list(field.parameters()) + [x])
        results.append(([out.density, out.albedo, out.normal, out.features, alone, density], grads, len(calls)))
    (values, grads, n_plain), (values_rc, grads_rc, n_rc) = results
    # every network evaluation goes through the checkpoint: forward (density, features), normal(), forward_density()
    # (finite differences: one more, the density at the probes)
    assert (n_plain, n_rc) == (0, n_checkpoints)
    for a, b in zip(values + list(grads), values_rc + list(grads_rc)):
        assert torch.equal(a, b)
    assert all(t.abs().sum() > 0 for t in grads)


def test_recompute_mlps_does_nothing_without_autograd(monkeypatch):
    plain, recompute = field_pair("analytic")
    calls = count_checkpoints(monkeypatch)
    p = probe_world_points(2.0, seed=11)
    with torch.no_grad():
        a, b = plain(p, with_normal=True), recompute(p, with_normal=True)
    assert not calls and not b.density.requires_grad
    assert torch.equal(a.normal, b.normal) and torch.equal(a.features, b.features)


class _Saved:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def saved_for_backward(fn, module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors autograd still keeps for the backward once fn has run (while its outputs live), parameters left
    out. Each is held by the graph through a `_Saved`; those of graph parts freed during fn are gone by the end."""
    params = {q.untyped_storage().data_ptr() for q in module.parameters()}
    held: weakref.WeakSet[_Saved] = weakref.WeakSet()

    def pack(t: torch.Tensor) -> _Saved | torch.Tensor:
        if t.untyped_storage().data_ptr() in params:
            return t
        box = _Saved(t)
        held.add(box)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda b: b.tensor if isinstance(b, _Saved) else b):
        outputs = fn()  # noqa: F841  (keeps the graph alive)
        return [box.tensor for box in held]


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind tensors (views of one storage count once)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@pytest.mark.parametrize("normal_type, at_most", [("analytic", 0.4), ("finite_difference", 0.6)])
def test_recompute_mlps_keeps_less_for_the_backward(normal_type, at_most):
    """A NeRF training pass (forward with normals, normals at perturbed points) on the default 64-wide MLPs: with
    recompute_mlps no hidden activation stays for the backward, and what remains is mostly the encoding's. (Finite
    differences keep more of the encoding: it runs at six probes per point.)"""
    mlp = MLPConfig()
    plain, recompute = (f.float() for f in field_pair(normal_type, mlp))
    p = torch.rand(2000, 3, generator=torch.Generator().manual_seed(12)) * 2 - 1

    def step(field):
        return field(p, with_normal=True), field.normal(p + 0.01)

    kept_plain, kept = (saved_for_backward(lambda: step(f), f) for f in (plain, recompute))
    hidden = lambda kept: [t for t in kept if t.shape[-1] == mlp.n_neurons]  # noqa: E731
    assert hidden(kept_plain) and not hidden(kept)
    assert storage_bytes(kept) < at_most * storage_bytes(kept_plain)


def test_recompute_mlps_from_a_config_override():
    from hash3d.config import build, load_config

    config = Path(__file__).resolve().parents[1] / "src" / "hash3d" / "shipped" / "threestudio-configs" / "stable-zero123.yaml"
    small = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12"]
    default, _ = load_config(config, small)
    cfg, _ = load_config(config, [*small, "system.geometry.recompute_mlps=true"])
    assert default.system.geometry.recompute_mlps is False and cfg.system.geometry.recompute_mlps is True
    geometry = build("geometry", cfg.system.geometry_type, cfg.system.geometry)
    assert isinstance(geometry, ImplicitVolume) and geometry.config.recompute_mlps is True
