"""Quantizing request keys (elevation °, azimuth °, camera distance, timestep) onto grid cells, and hashing cells."""

from __future__ import annotations

import math

import torch

AZIMUTH = 1

# Large primes for spatial hashing (Teschner et al. 2003 use the first three); one per key dimension.
HASH_PRIMES = (73856093, 19349669, 83492791, 50331653)

# remainder(-1e-15, 360) rounds to 360.0 itself; such an angle lies just below 360, in the last cell.
_AZIMUTH_MAX = math.nextafter(360.0, 0.0)


def quantize(keys: torch.Tensor, cell_size: torch.Tensor) -> torch.Tensor:
    """keys [..., 4] float, cell_size [4] -> integer cell coordinates [..., 4] (int64).

    Cell = floor(key / cell size) per dimension; azimuth is first wrapped into [0, 360) so that -5° and 355° share a
    cell.
    """
    keys = keys.to(torch.float64)
    wrapped = keys.clone()
    wrapped[..., AZIMUTH] = torch.remainder(keys[..., AZIMUTH], 360.0).clamp_max(_AZIMUTH_MAX)
    return torch.floor(wrapped / cell_size.to(torch.float64)).to(torch.int64)


def hash_primes(device: torch.device | str) -> torch.Tensor:
    """HASH_PRIMES as a tensor on `device` (make it once: building it from Python data copies to the GPU)."""
    return torch.tensor(HASH_PRIMES, dtype=torch.int64, device=device)


def bucket_index(cells: torch.Tensor, n_buckets: int, primes: torch.Tensor | None = None) -> torch.Tensor:
    """cells [..., 4] int64 -> bucket index [...] in [0, n_buckets). Different cells may share a bucket."""
    if primes is None:
        primes = hash_primes(cells.device)
    mixed = cells * primes
    h = mixed[..., 0] ^ mixed[..., 1] ^ mixed[..., 2] ^ mixed[..., 3]
    return torch.remainder(h, n_buckets)
