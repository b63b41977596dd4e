"""Diffusion models: loading, the Hash3D UNet cache, and SDS guidance."""

from .unet_cache import UNetCache, apply_hash_cache, get_hash_cache, remove_hash_cache

__all__ = ["UNetCache", "apply_hash_cache", "get_hash_cache", "remove_hash_cache"]
