"""Fused Triton kernels of `HashTable`'s query and insert (the table's backend "triton"; "auto" takes them on CUDA).

The torch path of `table.py` is some forty small kernels per query and ninety per insert: at SDS batch sizes the
launches, not the data, set the cost. Here a query is two kernels and an insert three (four with adaptive grids):

    query   select: per sample, the cell and bucket in every grid, the live same-cell entries, the best-scoring grid,
                    the latent distances and the softmax weights; counts queries and hits.
            blend:  per sample and block of the value, the weighted sum of the chosen entries' values.
    insert  dots (adaptive grids only): per sample and block, the dot products of the new value with the entries
                    already in its buckets (read before anything is written, as the torch path's scores are).
            copy:   per sample and block, the new latents and values into their pool slots, and the value's partial
                    sums of squares (its norm).
            book:   one program walks the batch in order: scores, pool ids and norms, bucket references, heads and the
                    entry counter; then marks the bucket references for the live scan.
            live:   counts the live entries (distinct pool slots referenced by a live bucket entry), with per-slot
                    stamps of the insert's epoch instead of a cleared scratch array.

Same state and results as the torch path: hits, bucket contents, ids, heads, pool contents and counters exactly;
blends, norms and scores to float rounding (summation order differs). Everything stays on the device and every
shape depends on the batch size only, so both run inside CUDA graphs. The batch size is not a specialisation of the
kernels, so one compile serves every batch; `HashTable` runs each once, as a no-op, before any capture.
"""

from __future__ import annotations

import torch

from ..triton_support import tl, triton

BLOCK = 1024
"""Elements of a latent or value per program (blend, copy, dots) and per step of the select kernel's distance loop."""
LIVE_BLOCK = 1024
"""Bucket references per program of the live scan."""

if triton is not None:

    @triton.jit
    def _locate(key_ptr, cs_ptr, row, n_buckets, M: tl.constexpr, MP: tl.constexpr):
        """Row `row` of the keys -> (grid lanes [MP], cells [MP, 4] int64, buckets [MP]) in every grid, as
        keys.quantize (float64; azimuth wrapped first) and keys.bucket_index. Lanes >= M repeat grid 0."""
        m = tl.arange(0, MP)
        dim = tl.arange(0, 4)
        k = tl.load(key_ptr + row * 4 + dim).to(tl.float64)
        k = tl.where(k - k == 0, k, 0.0)  # NaN/inf (rows never kept nor answered) -> 0, a defined cell
        # x - floor(x / 360) * 360 is the exact remainder (rounded once where it is negative and 360 is added, as
        # torch.remainder), then clamped below 360 like keys._AZIMUTH_MAX (the largest float64 below 360)
        wrapped = k - tl.floor(k / 360.0) * 360.0
        wrapped = tl.where(wrapped < 0, wrapped + 360.0, wrapped)
        wrapped = tl.minimum(wrapped, tl.full([4], 0x40767FFFFFFFFFFF, tl.int64).to(tl.float64, bitcast=True))
        k = tl.where(dim == 1, wrapped, k)
        cell_size = tl.load(cs_ptr + (m % M)[:, None] * 4 + dim[None, :])
        cells = tl.floor(k[None, :] / cell_size).to(tl.int64)
        primes = tl.where(dim == 0, 73856093, tl.where(dim == 1, 19349669, tl.where(dim == 2, 83492791, 50331653)))
        h = tl.xor_sum(cells * primes.to(tl.int64)[None, :], 1)  # keys.HASH_PRIMES
        bucket = h % n_buckets
        return m, cells, tl.where(bucket < 0, bucket + n_buckets, bucket)

    @triton.jit
    def _bucket_entries(cells_ptr, ref_slot_ptr, ref_id_ptr, pool_ids_ptr, m, cells, bucket, n_buckets,
                        M: tl.constexpr, Q: tl.constexpr, QP: tl.constexpr):
        """The references of each grid's bucket -> (pool slots [MP, QP], mask of live entries of the cell [MP, QP])."""
        q = tl.arange(0, QP)
        dim = tl.arange(0, 4)
        ok = (m < M)[:, None] & (q < Q)[None, :]
        ref = ((m * (n_buckets + 1) + bucket) * Q)[:, None] + q[None, :]
        slots = tl.load(ref_slot_ptr + ref, mask=ok, other=0)
        ids = tl.load(ref_id_ptr + ref, mask=ok, other=-1)
        pool_ids = tl.load(pool_ids_ptr + slots, mask=ok, other=-2)
        stored = tl.load(cells_ptr + ref[:, :, None] * 4 + dim[None, None, :], mask=ok[:, :, None], other=0)
        same = tl.min((stored == cells[:, None, :]).to(tl.int32), 2) > 0
        return slots, ok & (ids >= 0) & (pool_ids == ids) & same

    @triton.jit
    def _row_of(x, m, lane):
        """Row `lane` of a [MP, QP] tensor."""
        return tl.sum(tl.where((m == lane)[:, None], x, 0), 0)

    @triton.jit(do_not_specialize=["B"])
    def _query_select_kernel(
        key_ptr, lat_ptr, cs_ptr, cells_ptr, ref_slot_ptr, ref_id_ptr, score_ptr, pool_ids_ptr, pool_lat_ptr,
        w_ptr, slot_out_ptr, hit_ptr, counters_ptr, B, n_buckets, temperature,
        M: tl.constexpr, MP: tl.constexpr, Q: tl.constexpr, QP: tl.constexpr, DL: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        m, cells, bucket = _locate(key_ptr, cs_ptr, b, n_buckets, M, MP)
        slots, valid = _bucket_entries(cells_ptr, ref_slot_ptr, ref_id_ptr, pool_ids_ptr, m, cells, bucket,
                                       n_buckets, M, Q, QP)
        has = tl.max(valid.to(tl.int32), 1) > 0
        score = tl.load(score_ptr + m * (n_buckets + 1) + bucket, mask=has, other=float("-inf"))
        top = tl.max(score, 0)
        # the first grid of the highest score among those with entries; none: grid 0, whose mask is then empty
        best = tl.min(tl.where(has & (score == top), m, MP), 0) % MP
        best_slots = _row_of(slots, m, best)
        best_valid = _row_of(valid.to(tl.int32), m, best) > 0
        hit = tl.max(has.to(tl.int32), 0)

        d = tl.arange(0, BLOCK_D)
        acc = tl.zeros([QP, BLOCK_D], dtype=tl.float32)
        for start in range(0, DL, BLOCK_D):
            dmask = start + d < DL
            x = tl.load(lat_ptr + b * DL + start + d, mask=dmask, other=0.0).to(tl.float32)
            e = tl.load(pool_lat_ptr + best_slots[:, None] * DL + start + d[None, :],
                        mask=best_valid[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            diff = e - x[None, :]
            acc += diff * diff
        logits = tl.where(best_valid, -tl.sum(acc, 1) / temperature, float("-inf"))
        e = tl.where(best_valid, tl.exp(logits - tl.where(hit > 0, tl.max(logits, 0), 0.0)), 0.0)
        weights = e / tl.maximum(tl.sum(e, 0), 1e-38)

        q = tl.arange(0, QP)
        tl.store(w_ptr + b * QP + q, weights)
        tl.store(slot_out_ptr + b * QP + q, best_slots)
        tl.store(hit_ptr + b, hit.to(tl.int8))
        tl.atomic_add(counters_ptr + 0, 1)
        tl.atomic_add(counters_ptr + 1, hit.to(tl.int64))

    @triton.jit
    def _query_blend_kernel(w_ptr, slot_ptr, pool_val_ptr, out_ptr, QP: tl.constexpr, DV: tl.constexpr,
                            BLOCK_D: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < DV
        q = tl.arange(0, QP)
        w = tl.load(w_ptr + b * QP + q)
        slots = tl.load(slot_ptr + b * QP + q)
        v = tl.load(pool_val_ptr + slots[:, None] * DV + d[None, :], mask=(w != 0)[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        out = tl.sum(v * w[:, None], 0)
        tl.store(out_ptr + b * DV + d, out.to(out_ptr.dtype.element_ty), mask=dmask)

    @triton.jit
    def _kept_rank(mask_ptr, b):
        """How many rows before row b are kept (their order of the new entry ids)."""
        r = tl.arange(0, 128)
        rank = b * 0
        for start in range(0, b, 128):
            rank += tl.sum(tl.load(mask_ptr + start + r, mask=start + r < b, other=0).to(tl.int64), 0)
        return rank

    @triton.jit
    def _sum_row(x_ptr, n):
        """Sum of x[0:n] (float32)."""
        c = tl.arange(0, 128)
        total = 0.0
        for start in range(0, n, 128):
            total += tl.sum(tl.load(x_ptr + start + c, mask=start + c < n, other=0.0), 0)
        return total

    @triton.jit(do_not_specialize=["B"])
    def _insert_dots_kernel(
        key_ptr, val_ptr, cs_ptr, cells_ptr, ref_slot_ptr, ref_id_ptr, pool_ids_ptr, pool_val_ptr, dots_ptr,
        B, n_buckets, n_chunks, M: tl.constexpr, MP: tl.constexpr, Q: tl.constexpr, QP: tl.constexpr,
        DV: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """dots [B, n_chunks, M, QP]: partial <v_new, v_i> over this block for the entries of every grid's bucket."""
        b = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < DV
        v = tl.load(val_ptr + b * DV + d, mask=dmask, other=0.0).to(tl.float32)
        m, cells, bucket = _locate(key_ptr, cs_ptr, b, n_buckets, M, MP)
        slots, valid = _bucket_entries(cells_ptr, ref_slot_ptr, ref_id_ptr, pool_ids_ptr, m, cells, bucket,
                                       n_buckets, M, Q, QP)
        q = tl.arange(0, QP)
        for grid in tl.static_range(M):
            grid_slots = _row_of(slots, m, grid)
            grid_valid = _row_of(valid.to(tl.int32), m, grid) > 0
            e = tl.load(pool_val_ptr + grid_slots[:, None] * DV + d[None, :],
                        mask=grid_valid[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            tl.store(dots_ptr + ((b * n_chunks + chunk) * M + grid) * QP + q, tl.sum(e * v[None, :], 1))

    @triton.jit(do_not_specialize=["B"])
    def _insert_copy_kernel(
        lat_ptr, val_ptr, mask_ptr, next_id_ptr, pool_lat_ptr, pool_val_ptr, sq_ptr, B, capacity, n_chunks,
        DL: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Kept rows' latents and values into their pool slots; sq [B, n_chunks]: partial sums of squares."""
        b = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        kept = tl.load(mask_ptr + b) != 0
        slot = (tl.load(next_id_ptr) + _kept_rank(mask_ptr, b)) % capacity
        v = tl.load(val_ptr + b * DV + d, mask=d < DV, other=0.0)
        tl.store(pool_val_ptr + slot * DV + d, v.to(pool_val_ptr.dtype.element_ty), mask=d < tl.where(kept, DV, 0))
        v32 = v.to(tl.float32)
        tl.store(sq_ptr + b * n_chunks + chunk, tl.sum(v32 * v32, 0))
        x = tl.load(lat_ptr + b * DL + d, mask=d < DL, other=0.0)
        tl.store(pool_lat_ptr + slot * DL + d, x.to(pool_lat_ptr.dtype.element_ty), mask=d < tl.where(kept, DL, 0))

    @triton.jit(do_not_specialize=["B"])
    def _insert_book_kernel(
        key_ptr, mask_ptr, cs_ptr, cells_ptr, ref_slot_ptr, ref_id_ptr, head_ptr, score_ptr, pool_ids_ptr,
        pool_norm_ptr, sq_ptr, dots_ptr, mean_cos_ptr, next_id_ptr, live_ptr, epoch_ptr, counters_ptr,
        B, n_buckets, capacity, n_chunks, n_dot_chunks, gamma,
        M: tl.constexpr, MP: tl.constexpr, Q: tl.constexpr, QP: tl.constexpr, ADAPTIVE: tl.constexpr,
    ):
        """One program: the batch's bookkeeping, row by row in order (see the module docstring)."""
        q = tl.arange(0, QP)
        dim = tl.arange(0, 4)
        if ADAPTIVE:  # pass 1: every row's mean cosine against the entries present before the batch (NaN: none)
            for b in range(0, B):
                norm = tl.maximum(tl.sqrt(_sum_row(sq_ptr + b * n_chunks, n_chunks)), 1e-12)
                m, cells, bucket = _locate(key_ptr, cs_ptr, b, n_buckets, M, MP)
                slots, valid = _bucket_entries(cells_ptr, ref_slot_ptr, ref_id_ptr, pool_ids_ptr, m, cells, bucket,
                                               n_buckets, M, Q, QP)
                dot = tl.zeros([MP, QP], dtype=tl.float32)
                for k in range(0, n_dot_chunks):
                    dot += tl.load(dots_ptr + ((b * n_dot_chunks + k) * M + m[:, None]) * QP + q[None, :],
                                   mask=(m < M)[:, None], other=0.0)
                stored_norm = tl.maximum(tl.load(pool_norm_ptr + slots, mask=valid, other=1.0), 1e-12)
                cos = tl.where(valid, dot / norm / stored_norm, 0.0)
                n_valid = tl.sum(valid.to(tl.int32), 1)
                mean_cos = tl.sum(cos, 1) / tl.maximum(n_valid, 1).to(tl.float32)
                tl.store(mean_cos_ptr + b * M + m, tl.where(n_valid > 0, mean_cos, float("nan")), mask=m < M)
            tl.debug_barrier()

        # pass 2: the kept rows in order
        next_id = tl.load(next_id_ptr)
        n_kept = next_id * 0
        for b in range(0, B):
            if tl.load(mask_ptr + b) != 0:
                entry = next_id + n_kept
                slot = entry % capacity
                tl.store(pool_norm_ptr + slot, tl.sqrt(_sum_row(sq_ptr + b * n_chunks, n_chunks)))
                tl.store(pool_ids_ptr + slot, entry)
                m, cells, bucket = _locate(key_ptr, cs_ptr, b, n_buckets, M, MP)
                grids = m < M
                row = m * (n_buckets + 1) + bucket
                if ADAPTIVE:
                    mean_cos = tl.load(mean_cos_ptr + b * M + m, mask=grids, other=float("nan"))
                    update = grids & (mean_cos == mean_cos)
                    score = tl.load(score_ptr + row, mask=update, other=0.0)
                    tl.store(score_ptr + row, gamma * score + (1.0 - gamma) * mean_cos, mask=update)
                pos = tl.load(head_ptr + row, mask=grids, other=0)
                ref = row * Q + pos
                tl.store(ref_slot_ptr + ref, tl.zeros_like(ref) + slot, mask=grids)
                tl.store(ref_id_ptr + ref, tl.zeros_like(ref) + entry, mask=grids)
                tl.store(cells_ptr + ref[:, None] * 4 + dim[None, :], cells, mask=grids[:, None])
                tl.store(head_ptr + row, (pos + 1) % Q, mask=grids)
                n_kept += 1
            tl.debug_barrier()  # the next row reads what this one wrote (heads, scores)
        tl.store(next_id_ptr, next_id + n_kept)
        tl.atomic_add(counters_ptr + 2, n_kept)
        tl.store(live_ptr, n_kept * 0)
        tl.store(epoch_ptr, tl.load(epoch_ptr) + 1)

    @triton.jit
    def _live_scan_kernel(ref_slot_ptr, ref_id_ptr, pool_ids_ptr, stamp_ptr, epoch_ptr, live_ptr, n_buckets,
                          Q: tl.constexpr, M: tl.constexpr, BLOCK_R: tl.constexpr):
        """live += the pool slots first stamped with this epoch by a live reference (scratch bucket rows excluded)."""
        i = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        per_grid = n_buckets * Q
        inside = i < M * per_grid
        ref = (i // per_grid) * (per_grid + Q) + i % per_grid
        slots = tl.load(ref_slot_ptr + ref, mask=inside, other=0)
        ids = tl.load(ref_id_ptr + ref, mask=inside, other=-1)
        live = inside & (ids >= 0) & (tl.load(pool_ids_ptr + slots, mask=inside, other=-2) == ids)
        epoch = tl.load(epoch_ptr)
        old = tl.atomic_xchg(stamp_ptr + slots, tl.zeros_like(slots) + epoch, mask=live)
        tl.atomic_add(live_ptr, tl.sum((live & (old != epoch)).to(tl.int64), 0))


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned, so every call shares one kernel specialisation (a new compile is not
    allowed inside a CUDA graph capture)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(n))


def query(table, keys: torch.Tensor, latents: torch.Tensor, counters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The table's query (table.py's `query_core`) in two kernels; counts into `counters` (queries, hits)."""
    B, dev, QP = keys.shape[0], table.device, _pow2(table.bucket_size)
    DL, DV = table.storage.pool_latents.shape[1], table.storage.pool_values.shape[1]
    out = torch.empty((B, DV), dtype=table.storage.pool_values.dtype, device=dev)
    hit = torch.empty(B, dtype=torch.int8, device=dev)  # every row written by the select kernel
    if B:
        weights = torch.empty((B, QP), dtype=torch.float32, device=dev)
        slots = torch.empty((B, QP), dtype=torch.int64, device=dev)
        _query_select_kernel[(B,)](
            _aligned(keys), _aligned(latents.reshape(B, -1)), table.cell_sizes, table.storage.cells, table.storage.ref_slot,
            table.storage.ref_id, table.storage.score, table.storage.pool_ids, table.storage.pool_latents, weights, slots, hit, counters,
            B, table.n_buckets, table.temperature,
            M=table.n_grids, MP=_pow2(table.n_grids), Q=table.bucket_size, QP=QP, DL=DL, BLOCK_D=BLOCK,
        )
        _query_blend_kernel[(B, triton.cdiv(DV, BLOCK))](
            weights, slots, table.storage.pool_values, out, QP=QP, DV=DV, BLOCK_D=BLOCK
        )
    return out.reshape((B,) + table.value_shape), hit.view(torch.bool)


def insert(table, keys: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> None:
    """The table's masked insert (table.py's `insert_core`) in three or four kernels."""
    B, dev, M, QP = keys.shape[0], table.device, table.n_grids, _pow2(table.bucket_size)
    DL, DV = table.storage.pool_latents.shape[1], table.storage.pool_values.shape[1]
    chunks = triton.cdiv(max(DL, DV), BLOCK)
    value_chunks = triton.cdiv(DV, BLOCK)
    keys, values = _aligned(keys), _aligned(values.reshape(B, -1))
    mask = _aligned(mask.view(torch.uint8))
    sq = torch.empty((B, chunks), dtype=torch.float32, device=dev)  # every (row, block) written by the copy kernel
    adaptive = M > 1
    dots = torch.empty((B, value_chunks, M, QP) if adaptive else (1,), dtype=torch.float32, device=dev)
    mean_cos = torch.empty((B, M) if adaptive else (1,), dtype=torch.float32, device=dev)
    common = (table.cell_sizes, table.storage.cells, table.storage.ref_slot, table.storage.ref_id)
    if adaptive:
        _insert_dots_kernel[(B, value_chunks)](
            keys, values, *common, table.storage.pool_ids, table.storage.pool_values, dots, B, table.n_buckets, value_chunks,
            M=M, MP=_pow2(M), Q=table.bucket_size, QP=QP, DV=DV, BLOCK_D=BLOCK,
        )
    _insert_copy_kernel[(B, chunks)](
        _aligned(latents.reshape(B, -1)), values, mask, table.storage.next_id, table.storage.pool_latents, table.storage.pool_values, sq,
        B, table.capacity, chunks, DL=DL, DV=DV, BLOCK_D=BLOCK,
    )
    _insert_book_kernel[(1,)](
        keys, mask, *common, table.storage.head, table.storage.score, table.storage.pool_ids, table.storage.pool_norms, sq,
        dots, mean_cos, table.storage.next_id, table.storage.live, table.storage.epoch, table.counters.values,
        B, table.n_buckets, table.capacity, chunks, value_chunks, table.gamma,
        M=M, MP=_pow2(M), Q=table.bucket_size, QP=QP, ADAPTIVE=adaptive,
    )
    refs = M * table.n_buckets * table.bucket_size
    _live_scan_kernel[(triton.cdiv(refs, LIVE_BLOCK),)](
        table.storage.ref_slot, table.storage.ref_id, table.storage.pool_ids, table.storage.stamp, table.storage.epoch, table.storage.live, table.n_buckets,
        Q=table.bucket_size, M=M, BLOCK_R=LIVE_BLOCK,
    )
