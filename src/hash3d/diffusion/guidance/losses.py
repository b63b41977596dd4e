"""The SDS loss: a scalar whose gradient with respect to the latents is the SDS gradient."""

from __future__ import annotations

from typing import Literal

import torch


class _SDSLoss(torch.autograd.Function):
    """0.5·scale·‖grad‖², whose gradient with respect to `latents` is scale·grad: the value of threestudio's
    0.5·‖latents − (latents − grad)‖² without its half-dozen kernels forward and backward."""

    @staticmethod
    def forward(ctx, latents: torch.Tensor, grad: torch.Tensor, scale: float, value: torch.Tensor | None):
        ctx.save_for_backward(grad)
        ctx.scale, ctx.dtype = scale, latents.dtype
        return sds_loss_value(grad, scale) if value is None else value

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        scaled = grad_output if ctx.scale == 1.0 else grad_output * ctx.scale
        return (grad * scaled).to(ctx.dtype), None, None, None


def loss_scale(batch: int, reduction: Literal["sum", "batch_mean"]) -> float:
    return 1.0 / batch if reduction == "batch_mean" else 1.0


def sds_loss_value(grad: torch.Tensor, scale: float) -> torch.Tensor:
    """0.5·scale·‖grad‖² (float32 scalar)."""
    return grad.float().square().sum() * (0.5 * scale)


def sds_loss(
    latents: torch.Tensor, grad: torch.Tensor, reduction: Literal["sum", "batch_mean"] = "sum",
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """A loss whose gradient with respect to `latents` is `grad` (or grad / B for batch_mean). value: its value
    (`sds_loss_value`) when already computed, e.g. inside a CUDA graph; the loss is then that tensor itself (a view
    of it), not a copy."""
    return _SDSLoss.apply(latents, grad.detach(), loss_scale(latents.shape[0], reduction), value)
