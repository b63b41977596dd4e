"""Cache variants of a quality run, named on the command line.

    off                      cache off (the mini config without its cache block)
    on                       the `_hash3d` mini config's cache exactly as written there
    features@0.3             deep-feature reuse, hash probability η = 0.3, the fixed grid of the _hash3d config
    noise@1                  noise-prediction reuse, η = 1 (every call tries the cache)
    features+adaptive@0.1    deep-feature reuse on the paper's adaptive grid (cells 10/20/30), η = 0.1
    noise@auto               noise-prediction reuse under the cost-aware policy (`policy.strategy: auto`)
    noise+adaptive@0.5       the same with noise reuse

A cache-on variant starts from the cache block of the front-end's `_hash3d` mini config (cell size, bucket size,
…) and changes only mode, grid and η, so "features@0.5" on the DreamGaussian pipeline is exactly
`image_mini_hash3d.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.errors import ConfigError

__all__ = ["ETAS", "AS_CONFIGURED", "Variant", "parse_variant", "parse_variants", "default_variants"]

ETAS = (0.1, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class Variant:
    enabled: bool
    mode: str = "features"
    """features | noise, or config: the `_hash3d` config's cache block as written (name "on")."""
    probability: float = 0.0
    adaptive: bool = False
    auto: bool = False
    """The cost-aware policy instead of a fixed η."""

    @property
    def name(self) -> str:
        if not self.enabled:
            return "off"
        if self.mode == "config":
            return "on"
        return f"{self.mode}{'+adaptive' if self.adaptive else ''}@{'auto' if self.auto else f'{self.probability:g}'}"

    def overrides(self, prefix: str = "cache") -> list[str]:
        """`key=value` overrides of a config's cache block (`prefix` is its dotted path)."""
        if not self.enabled:
            return [f"{prefix}.enabled=false"]
        if self.mode == "config":
            return [f"{prefix}.enabled=true"]
        return [
            f"{prefix}.enabled=true",
            f"{prefix}.mode={self.mode}",
            f"{prefix}.adaptive={str(self.adaptive).lower()}",
            f"{prefix}.policy.probability={self.probability:g}",
            f"{prefix}.policy.strategy={'auto' if self.auto else 'fixed'}",
        ]


AS_CONFIGURED = Variant(True, "config")
"""The cache block of the `_hash3d` config as it is."""


def parse_variant(text: str) -> Variant:
    """'off' | '{features|noise}[+adaptive]@η' -> Variant (ValueError naming the accepted forms)."""
    text = text.strip().lower()
    if text in ("off", "none", "no-cache"):
        return Variant(False)
    if text == "on":
        return AS_CONFIGURED
    forms = "'off', 'on', 'features@0.3', 'noise@1', 'features+adaptive@0.1', 'noise@auto'"
    if "@" not in text:
        raise ConfigError(f"cache variant {text!r}: expected one of the forms {forms}")
    head, eta_text = text.split("@", 1)
    parts = head.split("+")
    mode, flags = parts[0], set(parts[1:])
    if mode not in ("features", "noise") or not flags <= {"adaptive"}:
        raise ConfigError(f"cache variant {text!r}: expected one of the forms {forms}")
    if eta_text == "auto":
        return Variant(True, mode, 1.0, "adaptive" in flags, auto=True)
    try:
        eta = float(eta_text)
    except ValueError:
        raise ConfigError(f"cache variant {text!r}: η must be a number in (0, 1]") from None
    if not 0 < eta <= 1:
        raise ConfigError(f"cache variant {text!r}: η must be in (0, 1]")
    return Variant(True, mode, eta, "adaptive" in flags)


def parse_variants(text: str) -> list[Variant]:
    """Comma-separated variant names ('default' expands to `default_variants()`), duplicates dropped."""
    out: list[Variant] = []
    for item in text.split(","):
        if not item.strip():
            continue
        for v in default_variants() if item.strip() == "default" else [parse_variant(item)]:
            if v not in out:
                out.append(v)
    if not out:
        raise ConfigError("no cache variants given")
    return out


def default_variants(etas: tuple[float, ...] = ETAS) -> list[Variant]:
    """off; features and noise at every η on the fixed grid; features on the adaptive grid at every η."""
    out = [Variant(False)]
    for mode, adaptive in (("features", False), ("noise", False), ("features", True)):
        out += [Variant(True, mode, eta, adaptive) for eta in etas]
    return out
