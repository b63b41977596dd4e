"""Optional fused Triton path of the hash-grid encoding (`HashGridConfig.backend = "triton"`; off by default).

Same numbers as `hash_grid.hash_grid_encode` / `hash_grid_encode_with_jacobian` (same layout, hash, clamping, cell
choice and Jacobian conventions; summation order differs, so results agree to float32 rounding, not bit for bit):

- forward kernel: one program per block of points; it loops over the levels, computes the 8 corner entries of the
  point's cell (dense levels: x + y·V + z·V²; hashed levels: (x·1 ⊕ y·2654435761 ⊕ z·805459861) & mask, in int64,
  whose low 32 bits are uint32 arithmetic's), gathers their F features and writes the features (row 0) and, with
  the Jacobian, d features / d x_a (rows 1..3) — no [N, L, 8, F] intermediates.
- backward kernel: scatters grad_out into the table's gradient with `tl.atomic_add`, each corner weighted by its
  row-0 weight and its three derivative weights.

Differentiable with respect to the table only. The fused path does not give d/dx of the encoding (nor of its
Jacobian rows): a call whose points require grad (under grad mode) raises instead of silently returning a partial
gradient. The NeRF field does not need it: analytic normals come from the Jacobian rows as forward values, and
their training signal flows to the table and the MLPs, not to the sample points (rays do not require grad).

float32 points and table only. Validated against the torch path under Triton's CPU interpreter
(TRITON_INTERPRET=1); see tests/test_hash_grid_triton.py.
"""

from __future__ import annotations

import torch

from ..triton_support import tl, triton, triton_available, triton_interpreter_enabled

__all__ = ["hash_grid_encode_triton", "triton_available", "triton_interpreter_enabled"]

BLOCK_POINTS = 128
"""Points per program."""


if triton is not None:

    @triton.jit
    def _level_cell(x, res_f, res_i):
        """Clamped coordinate -> (lower cell vertex, position inside the cell), as the torch path."""
        pos = x * res_f
        cell = tl.minimum(tl.floor(pos).to(tl.int64), res_i - 1)
        return cell, pos - cell.to(tl.float32)

    @triton.jit
    def _load_points(x_ptr, pts, pmask):
        """Points [BLOCK] of an [N, 3] array -> clamped x, y, z and, per axis, the clamp's derivative: 1 inside
        [0, 1] (faces included), 0 outside."""
        xr = tl.load(x_ptr + pts * 3 + 0, mask=pmask, other=0.0)
        yr = tl.load(x_ptr + pts * 3 + 1, mask=pmask, other=0.0)
        zr = tl.load(x_ptr + pts * 3 + 2, mask=pmask, other=0.0)
        in_x = ((xr >= 0.0) & (xr <= 1.0)).to(tl.float32)
        in_y = ((yr >= 0.0) & (yr <= 1.0)).to(tl.float32)
        in_z = ((zr >= 0.0) & (zr <= 1.0)).to(tl.float32)
        x = tl.minimum(tl.maximum(xr, 0.0), 1.0)
        y = tl.minimum(tl.maximum(yr, 0.0), 1.0)
        z = tl.minimum(tl.maximum(zr, 0.0), 1.0)
        return x, y, z, in_x, in_y, in_z

    @triton.jit
    def _corner_entry(cx, cy, cz, verts, dense, hash_mask, off):
        """Corner vertex -> flat table row (int64): dense x + y·V + z·V², else the spatial hash & mask; + offset."""
        dense_idx = cx + cy * verts + cz * verts * verts
        hashed_idx = ((cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)) & hash_mask
        return tl.where(dense, dense_idx, hashed_idx) + off

    @triton.jit
    def _block(x_ptr, n_points, n_levels, N_FEAT: tl.constexpr, F_PAD: tl.constexpr, ROWS: tl.constexpr,
               BLOCK: tl.constexpr):
        """This program's points: feature lanes, their mask, the output width, each point's first output offset,
        and the clamped coordinates with their clamp derivatives."""
        pts = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        pmask = pts < n_points
        feat = tl.arange(0, F_PAD)
        mask2 = pmask[:, None] & (feat < N_FEAT)[None, :]
        x, y, z, in_x, in_y, in_z = _load_points(x_ptr, pts, pmask)
        width = n_levels * N_FEAT
        return feat, mask2, width, pts[:, None] * (ROWS * width) + feat[None, :], x, y, z, in_x, in_y, in_z

    @triton.jit
    def _level(res_ptr, off_ptr, lvl, n_dense, x, y, z, in_x, in_y, in_z):
        """One level's table offset, vertices per axis, dense flag, the points' cells and positions inside them, and the
        derivative scale of the clamped coordinates (resolution inside [0, 1], 0 outside)."""
        res_i = tl.load(res_ptr + lvl).to(tl.int64)
        off = tl.load(off_ptr + lvl).to(tl.int64)
        res_f = res_i.to(tl.float32)
        cx, fx = _level_cell(x, res_f, res_i)
        cy, fy = _level_cell(y, res_f, res_i)
        cz, fz = _level_cell(z, res_f, res_i)
        return off, res_i + 1, lvl < n_dense, cx, cy, cz, fx, fy, fz, in_x * res_f, in_y * res_f, in_z * res_f

    @triton.jit
    def _corner(c: tl.constexpr, cx, cy, cz, fx, fy, fz, sx, sy, sz, verts, dense, hash_mask, off):
        """Corner c (bits i, j, k) of the cell -> its table row, trilinear weight and the weight's d/dx, d/dy, d/dz."""
        bi: tl.constexpr = (c >> 2) & 1
        bj: tl.constexpr = (c >> 1) & 1
        bk: tl.constexpr = c & 1
        wx = fx if bi else 1.0 - fx
        wy = fy if bj else 1.0 - fy
        wz = fz if bk else 1.0 - fz
        dx = sx if bi else -sx
        dy = sy if bj else -sy
        dz = sz if bk else -sz
        idx = _corner_entry(cx + bi, cy + bj, cz + bk, verts, dense, hash_mask, off)
        return idx, (wx * wy) * wz, (dx * wy) * wz, (wx * dy) * wz, (wx * wy) * dz

    @triton.jit
    def _hash_grid_fwd_kernel(
        x_ptr, table_ptr, res_ptr, off_ptr, out_ptr,
        n_points, n_levels, n_dense, hash_mask,
        N_FEAT: tl.constexpr, F_PAD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        feat, mask2, width, row0, x, y, z, in_x, in_y, in_z = _block(x_ptr, n_points, n_levels, N_FEAT, F_PAD, ROWS, BLOCK)
        for lvl in range(n_levels):
            off, verts, dense, cx, cy, cz, fx, fy, fz, sx, sy, sz = _level(
                res_ptr, off_ptr, lvl, n_dense, x, y, z, in_x, in_y, in_z
            )
            acc0 = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
            acc1 = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
            acc3 = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
            for c in tl.static_range(8):
                idx, w, w_x, w_y, w_z = _corner(c, cx, cy, cz, fx, fy, fz, sx, sy, sz, verts, dense, hash_mask, off)
                v = tl.load(table_ptr + idx[:, None] * N_FEAT + feat[None, :], mask=mask2, other=0.0)
                acc0 += w[:, None] * v
                if ROWS == 4:
                    acc1 += w_x[:, None] * v
                    acc2 += w_y[:, None] * v
                    acc3 += w_z[:, None] * v
            base = row0 + lvl * N_FEAT
            tl.store(out_ptr + base, acc0, mask=mask2)
            if ROWS == 4:
                tl.store(out_ptr + base + width, acc1, mask=mask2)
                tl.store(out_ptr + base + 2 * width, acc2, mask=mask2)
                tl.store(out_ptr + base + 3 * width, acc3, mask=mask2)

    @triton.jit
    def _hash_grid_bwd_kernel(
        x_ptr, grad_out_ptr, res_ptr, off_ptr, grad_table_ptr,
        n_points, n_levels, n_dense, hash_mask,
        N_FEAT: tl.constexpr, F_PAD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        feat, mask2, width, row0, x, y, z, in_x, in_y, in_z = _block(x_ptr, n_points, n_levels, N_FEAT, F_PAD, ROWS, BLOCK)
        for lvl in range(n_levels):
            off, verts, dense, cx, cy, cz, fx, fy, fz, sx, sy, sz = _level(
                res_ptr, off_ptr, lvl, n_dense, x, y, z, in_x, in_y, in_z
            )
            base = row0 + lvl * N_FEAT
            g0 = tl.load(grad_out_ptr + base, mask=mask2, other=0.0)
            if ROWS == 4:
                g1 = tl.load(grad_out_ptr + base + width, mask=mask2, other=0.0)
                g2 = tl.load(grad_out_ptr + base + 2 * width, mask=mask2, other=0.0)
                g3 = tl.load(grad_out_ptr + base + 3 * width, mask=mask2, other=0.0)
            for c in tl.static_range(8):
                idx, w, w_x, w_y, w_z = _corner(c, cx, cy, cz, fx, fy, fz, sx, sy, sz, verts, dense, hash_mask, off)
                contrib = w[:, None] * g0
                if ROWS == 4:
                    contrib += w_x[:, None] * g1
                    contrib += w_y[:, None] * g2
                    contrib += w_z[:, None] * g3
                tl.atomic_add(grad_table_ptr + idx[:, None] * N_FEAT + feat[None, :], contrib, mask=mask2)


def _check_inputs(x: torch.Tensor, table: torch.Tensor, resolution: torch.Tensor, offset: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the triton hash-grid backend needs the `triton` package (pip install triton)")
    if x.dtype != torch.float32 or table.dtype != torch.float32:
        raise TypeError(
            f"the triton hash-grid backend supports float32 points and table only; got points {x.dtype}, "
            f"table {table.dtype} (use backend 'torch' for other dtypes)"
        )
    if x.ndim != 2 or x.shape[1] != 3 or table.ndim != 2:
        raise ValueError(f"expected points [N, 3] and table [E, F]; got {tuple(x.shape)} and {tuple(table.shape)}")
    devices = {t.device for t in (x, table, resolution, offset)}
    if len(devices) != 1:
        raise ValueError(f"points, table, resolution and offset must be on one device; got {sorted(map(str, devices))}")


def _launch_args(n_feat: int, rows: int) -> dict:
    # no fused multiply-adds: the weights and positions round as in the torch path (memory-bound kernels anyway)
    return dict(
        N_FEAT=n_feat, F_PAD=triton.next_power_of_2(n_feat), ROWS=rows, BLOCK=BLOCK_POINTS, enable_fp_fusion=False
    )


class _HashGridEncodeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, resolution, offset, n_dense: int, hash_mask: int, rows: int):  # noqa: D401
        x = x.detach().contiguous()
        resolution = resolution.contiguous()
        offset = offset.contiguous()
        n, n_levels, n_feat = x.shape[0], resolution.shape[0], table.shape[1]
        out = torch.empty(n, rows, n_levels * n_feat, device=x.device, dtype=torch.float32)
        if n > 0:
            grid = (triton.cdiv(n, BLOCK_POINTS),)
            _hash_grid_fwd_kernel[grid](
                x, table.detach().contiguous(), resolution, offset, out,
                n, n_levels, n_dense, hash_mask, **_launch_args(n_feat, rows),
            )
        ctx.save_for_backward(x, resolution, offset)
        ctx.meta = (n_dense, hash_mask, rows, tuple(table.shape))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, resolution, offset = ctx.saved_tensors
        n_dense, hash_mask, rows, table_shape = ctx.meta
        grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros(table_shape, device=x.device, dtype=torch.float32)
            n, n_levels = x.shape[0], resolution.shape[0]
            if n > 0:
                grid = (triton.cdiv(n, BLOCK_POINTS),)
                _hash_grid_bwd_kernel[grid](
                    x, grad_out.contiguous().to(torch.float32), resolution, offset, grad_table,
                    n, n_levels, n_dense, hash_mask, **_launch_args(table_shape[1], rows),
                )
        # no gradient to the points (see the module docstring), nor to the integer layout tensors
        return None, grad_table, None, None, None, None, None


def hash_grid_encode_triton(
    x: torch.Tensor,  # [N, 3] float32 in [0, 1] (clamped)
    table: torch.Tensor,  # [E, F] float32
    resolution: torch.Tensor,  # [L] int64
    offset: torch.Tensor,  # [L] int64
    n_dense: int,
    hash_mask: int,
    with_jacobian: bool = True,
) -> torch.Tensor:
    """Fused `hash_grid_encode_with_jacobian` ([N, 4, L·F]) or, with_jacobian=False, `hash_grid_encode` ([N, L·F]).

    Differentiable with respect to `table` only; raises if `x` requires grad under grad mode (the fused path has no
    d/dx of the encoding).
    """
    _check_inputs(x, table, resolution, offset)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "the triton hash-grid backend gives no gradient with respect to the points, but the points require grad; "
            "detach them, or use geometry.pos_encoding_config.backend: torch"
        )
    rows = 4 if with_jacobian else 1
    out = _HashGridEncodeTriton.apply(x, table, resolution, offset, int(n_dense), int(hash_mask), rows)
    return out if with_jacobian else out.view(out.shape[0], out.shape[2])
