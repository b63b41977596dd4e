"""Telling a Hugging Face hub id from a local path (the model loaders and the Shap-E shape prior both accept either)."""

from __future__ import annotations

__all__ = ["is_hub_id"]


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hugging Face hub id ('owner/name' or 'name'), not as a local path."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - any refusal means: not a hub id
        return False
    return True
