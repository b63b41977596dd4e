"""`mlp_with_jacobian` (the forward-mode MLP of analytic normals) against torch.func.jvp of the plain network, and
what its ReLU leaves autograd to keep for the backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hash3d.scene.mlp import MLPConfig, make_mlp, mlp_with_jacobian

F64 = torch.float64


def network(config: MLPConfig, n_in: int = 12, n_out: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mlp = make_mlp(n_in, n_out, config).double()
    if config.bias:
        with torch.no_grad():  # biases large enough to move where the ReLUs switch
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    layer.bias.uniform_(-0.5, 0.5)
    return mlp


def jet(n: int, n_in: int = 12, k: int = 3, seed: int = 1) -> torch.Tensor:
    """[n, 1 + k, n_in]: inputs in row 0, k tangent directions after it."""
    return torch.randn(n, 1 + k, n_in, generator=torch.Generator().manual_seed(seed), dtype=F64)


def product_relu_mlp_with_jacobian(mlp: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """The former formulation of the ReLU: h times a float copy of row 0's mask."""
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            h = F.linear(h, layer.weight)
            if layer.bias is not None:
                h = h + F.pad(layer.bias[None], (0, 0, 0, h.shape[1] - 1))
        else:
            assert isinstance(layer, nn.ReLU)
            h = h * (h[:, :1] > 0).to(h.dtype)
    return h


def saved_by_autograd(fn, exclude: list[torch.Tensor]) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of each tensor autograd saves while fn runs, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in exclude}
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


MLPS = [
    pytest.param(MLPConfig(n_neurons=16, n_hidden_layers=2), id="relu"),
    pytest.param(MLPConfig(n_neurons=16, n_hidden_layers=3, bias=True), id="relu-bias"),
    pytest.param(MLPConfig(n_neurons=16, n_hidden_layers=2, activation="silu", bias=True), id="silu-bias"),
]


@pytest.mark.parametrize("config", MLPS)
def test_values_and_tangents_equal_jvp_of_the_plain_network(config):
    mlp = network(config)
    h = jet(200)
    out = mlp_with_jacobian(mlp, h)
    assert out.shape == (200, 4, 3)
    for d in range(1, 4):
        value, tangent = torch.func.jvp(mlp, (h[:, 0],), (h[:, d],))
        torch.testing.assert_close(out[:, 0], value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[:, d], tangent, rtol=1e-12, atol=1e-12)
    if config.activation == "relu":  # both sides of every ReLU are exercised
        pre = mlp[0](h[:, 0])
        assert 0.2 < (pre > 0).double().mean() < 0.8


@pytest.mark.parametrize("config", MLPS[:2])
def test_relu_gradients_equal_the_product_formulation(config):
    mlp = network(config)
    x = jet(200).requires_grad_(True)
    cot = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    params = list(mlp.parameters())
    ours = mlp_with_jacobian(mlp, x)
    ref = product_relu_mlp_with_jacobian(mlp, x)
    assert torch.equal(ours, ref)
    g_ours = torch.autograd.grad(ours, params + [x], cot)
    g_ref = torch.autograd.grad(ref, params + [x], cot)
    for a, b in zip(g_ours, g_ref):
        assert b.abs().sum() > 0 and torch.equal(a, b)


def test_relu_keeps_a_bool_mask_for_the_backward():
    config = MLPConfig(n_neurons=16, n_hidden_layers=2)
    mlp = network(config).float()
    n, width = 100, config.n_neurons
    x = jet(n).float().requires_grad_(True)
    params = list(mlp.parameters())
    ours = saved_by_autograd(lambda: mlp_with_jacobian(mlp, x), params)
    ref = saved_by_autograd(lambda: product_relu_mlp_with_jacobian(mlp, x), params)

    mask = (n, 1, width)
    assert ref.count((mask, torch.float32)) == 2  # one float mask per ReLU
    assert ours == [(s, torch.bool if (s, d) == (mask, torch.float32) else d) for s, d in ref]
    nbytes = lambda saved: sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in saved)  # noqa: E731
    assert nbytes(ref) - nbytes(ours) == 2 * n * width * (4 - 1)
