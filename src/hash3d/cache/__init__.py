"""Pose/timestep hash tables and their statistics."""

from .keys import bucket_index, quantize
from .stats import CacheStats
from .table import DEFAULT_ADAPTIVE_CELLS, AdaptiveGridHashTable, GridHashTable, HashTable

__all__ = [
    "AdaptiveGridHashTable",
    "CacheStats",
    "DEFAULT_ADAPTIVE_CELLS",
    "GridHashTable",
    "HashTable",
    "bucket_index",
    "quantize",
]
