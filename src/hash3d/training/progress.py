"""The training progress bar: step count, it/s (tqdm's own rate), loss, and the Hash3D cache hit rate."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm


def format_postfix(loss: float | None, cache: Mapping[str, float]) -> dict[str, str]:
    post: dict[str, str] = {}
    if loss is not None:
        post["loss"] = f"{loss:.4g}"
    if cache.get("queries"):
        post["hit"] = f"{100.0 * cache.get('hit_rate', 0.0):.1f}%"
    if "unet_calls_saved" in cache:
        post["saved"] = str(int(cache["unet_calls_saved"]))
    if "policy_trying" in cache:  # the cost-aware policy's current choice
        post["cache"] = "try" if cache["policy_trying"] else "skip"
    return post


class ProgressBar:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train", unit: str = "it"):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0.1,
        )

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, loss: float | None, cache: Mapping[str, Any]) -> None:
        self.bar.set_postfix(format_postfix(loss, cache), refresh=False)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
