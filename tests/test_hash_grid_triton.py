"""The optional fused Triton hash-grid path against the pure-torch one.

The kernel tests need triton and either a CUDA GPU or Triton's interpreter (TRITON_INTERPRET=1 set before the test
process starts), e.g. on CPU:

    TRITON_INTERPRET=1 pytest tests/test_hash_grid_triton.py
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

import pytest
import torch

from hash3d.scene import HashGrid, HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig
from hash3d.scene.hash_grid import hash_grid_encode, hash_grid_encode_with_jacobian

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and (torch.cuda.is_available() or INTERPRET)),
    reason="needs triton and a CUDA GPU, or TRITON_INTERPRET=1",
)

pytestmark = pytest.mark.gpu  # in Triton's interpreter on CPU machines, on the GPU in the GPU tier

SMALL = HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)
BAND = replace(SMALL, otype="ProgressiveBandHashGrid", start_level=3, start_step=0, update_steps=100)
# F = 3 (padded to 4 inside the kernel), a dense level of exactly 2**log2 entries' neighbourhood, odd scale
ODD = HashGridConfig(n_levels=4, n_features_per_level=3, log2_hashmap_size=9, base_resolution=3, per_level_scale=1.9)


def probe_points(n: int, seed: int) -> torch.Tensor:
    """Random points (some outside the box), grid vertices / cell faces (k/128, exact), the faces 0 and 1, and the
    cube's corners."""
    g = torch.Generator().manual_seed(seed)
    random = torch.rand(n, 3, generator=g) * 1.4 - 0.2
    vertices = torch.randint(0, 129, (n, 3), generator=g).float() / 128
    axis = torch.randint(0, 3, (n,), generator=g)
    faces = torch.rand(n, 3, generator=g)
    faces[torch.arange(n), axis] = (torch.arange(n) % 2).float()
    outside_one = torch.rand(n, 3, generator=g)
    outside_one[torch.arange(n), axis] = torch.where(torch.arange(n) % 2 == 0, -0.1, 1.1)
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.5], [1.2, 1.0, -0.3]])
    return torch.cat([random, vertices, faces, outside_one, corners])


def grid_pair(config: HashGridConfig, seed: int = 0) -> tuple[HashGrid, HashGrid]:
    torch.manual_seed(seed)
    ref = HashGrid(config).to(DEVICE)
    with torch.no_grad():
        ref.table.normal_()
    fused = HashGrid(replace(config, backend="triton")).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@needs_triton
@pytest.mark.parametrize("config", [SMALL, BAND, ODD], ids=["hash_grid", "progressive_band", "f3"])
@pytest.mark.parametrize("with_jacobian", [True, False], ids=["jacobian", "features"])
def test_fused_matches_torch_outputs_and_table_gradients(config, with_jacobian):
    ref, fused = grid_pair(config)
    levels = [lv.dense for lv in ref.levels]
    assert any(levels) and not all(levels)  # dense and hashed levels both covered
    for grid in (ref, fused):
        grid.update_step(100)  # band: 4 of 6 levels on
    x = probe_points(40, seed=1).to(DEVICE)
    fn = (lambda g: g.forward_with_jacobian(x)) if with_jacobian else (lambda g: g(x))
    out_ref, out = fn(ref), fn(fused)
    assert out.shape == out_ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    if config.otype != "HashGrid":
        assert (out[..., 8:] == 0).all()

    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)  # all 4 rows
    (g_ref,) = torch.autograd.grad(out_ref, ref.table, cot)
    (g,) = torch.autograd.grad(out, fused.table, cot)
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


@needs_triton
def test_fused_functions_match_on_hashed_levels_and_empty_input():
    """All levels hashed (a tiny table) with corners far from the origin: the hash's uint32 wrap-around matters."""
    from hash3d.scene.hash_grid_triton import hash_grid_encode_triton

    config = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=300, per_level_scale=3.0)
    ref, _ = grid_pair(config)
    assert ref.n_dense == 0 and ref.levels[-1].resolution == 2700
    x = torch.cat([probe_points(30, seed=3).to(DEVICE), torch.tensor([[0.999, 0.998, 0.997]], device=DEVICE)])
    args = (ref.table.detach(), ref.resolution, ref.offset, ref.n_dense, ref.hash_mask)
    torch.testing.assert_close(hash_grid_encode_triton(x, *args), hash_grid_encode_with_jacobian(x, *args), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hash_grid_encode_triton(x, *args, with_jacobian=False), hash_grid_encode(x, *args), rtol=1e-5, atol=1e-5)
    empty = torch.zeros(0, 3, device=DEVICE)
    assert hash_grid_encode_triton(empty, *args).shape == (0, 4, 6)
    assert hash_grid_encode_triton(empty, *args, with_jacobian=False).shape == (0, 6)


@needs_triton
def test_fused_rejects_other_dtypes_and_point_gradients():
    ref, fused = grid_pair(SMALL)
    x = probe_points(4, seed=4).to(DEVICE)
    with pytest.raises(TypeError, match="float32"):
        fused.double().forward_with_jacobian(x.double())
    fused.float()
    with pytest.raises(ValueError, match="points require grad"):
        fused(x.clone().requires_grad_(True))
    with torch.no_grad():  # fine without grad mode
        torch.testing.assert_close(fused(x.clone().requires_grad_(True)), ref(x), rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("recompute_mlps", [False, True], ids=["plain", "recompute_mlps"])
def test_implicit_volume_with_fused_encoding(recompute_mlps):
    """Analytic normals and the table/MLP gradients of a NeRF-style loss: the fused backend (its MLPs recomputed in
    the backward or not) matches torch's."""
    torch.manual_seed(0)
    mlp = MLPConfig(n_neurons=16, n_hidden_layers=2)
    ref = ImplicitVolume(ImplicitVolumeConfig(pos_encoding_config=BAND, mlp_network_config=mlp)).to(DEVICE)
    with torch.no_grad():
        ref.encoding.table.normal_(0, 0.5)
    fused = ImplicitVolume(ImplicitVolumeConfig(
        pos_encoding_config=replace(BAND, backend="triton"), mlp_network_config=mlp, recompute_mlps=recompute_mlps,
    )).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    for f in (ref, fused):
        f.update_step(100)
    p = (probe_points(20, seed=5) * 4 - 2).to(DEVICE)
    g = torch.Generator().manual_seed(6)
    v, w = (torch.randn(p.shape[0], k, generator=g).to(DEVICE) for k in (3, 1))
    grads = []
    for f in (ref, fused):
        out = f(p, with_normal=True)
        loss = (out.normal * v).sum() + (out.density * w).sum() + out.albedo.sum()
        grads.append((out, torch.autograd.grad(loss, list(f.parameters()))))
    (o_ref, g_ref), (o, g_fused) = grads
    torch.testing.assert_close(o.normal, o_ref.normal, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o.density, o_ref.density, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_triton_backend_unavailable_raises_a_clear_error(monkeypatch):
    """Always runs: with the interpreter off and a CPU tensor (or triton missing), the fused path cannot run."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    grid = HashGrid(replace(SMALL, backend="triton"))
    x = torch.rand(5, 3)
    with pytest.raises(ValueError, match=r"geometry\.pos_encoding_config\.backend.*torch.*CUDA GPU"):
        grid(x)
    with pytest.raises(ValueError, match=r"geometry\.pos_encoding_config\.backend"):
        grid.forward_with_jacobian(x)
    with pytest.raises(ValueError, match="backend must be"):
        replace(SMALL, backend="cuda")
    assert HashGridConfig().backend == "auto"


def test_auto_backend_takes_torch_where_the_fused_kernels_cannot_run(monkeypatch):
    """auto on the CPU (interpreter off), for float64, or for points that need a gradient: the torch path, exactly."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    auto, plain = HashGrid(replace(SMALL, backend="auto")), HashGrid(replace(SMALL, backend="torch"))
    plain.load_state_dict(auto.state_dict())
    x = torch.rand(7, 3, requires_grad=True)
    assert torch.equal(auto(x), plain(x))
    assert torch.equal(auto.forward_with_jacobian(x), plain.forward_with_jacobian(x))
    (g_auto,) = torch.autograd.grad(auto(x).sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).sum(), x)
    assert torch.equal(g_auto, g_plain)
    assert not auto._fused(x.double()) and not auto._fused(x)


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs triton, with the interpreter off")
@pytest.mark.parametrize("rows, n_feat", [(1, 2), (4, 2), (4, 3)])
def test_kernels_compile_for_an_h100_without_a_gpu(rows, n_feat):
    """The interpreter accepts code the compiler rejects: lower both kernels to PTX for sm_90 (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hash3d.scene import hash_grid_triton as fused

    constexprs = {"N_FEAT": n_feat, "F_PAD": triton.next_power_of_2(n_feat), "ROWS": rows, "BLOCK": fused.BLOCK_POINTS}
    for kernel in (fused._hash_grid_fwd_kernel, fused._hash_grid_bwd_kernel):
        types = ["*fp32", "*fp32", "*i64", "*i64", "*fp32", "i32", "i32", "i32", "i32"]
        signature = dict(zip(kernel.arg_names, types + ["constexpr"] * 4))
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options={"enable_fp_fusion": False},
        )
        assert ".entry" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0  # ptxas assembled it
        if kernel is fused._hash_grid_bwd_kernel:
            assert "atom" in compiled.asm["ptx"] or "red." in compiled.asm["ptx"]
