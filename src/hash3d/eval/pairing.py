"""Matching ground-truth views with predicted views by file name (000.png ↔ 000.png, or 000.jpg)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hash3d.eval.errors import EvalError, list_names
from hash3d.eval.images import list_images, natural_key


@dataclass(frozen=True)
class ImagePair:
    name: str  # the shared file stem
    gt: Path
    pred: Path


@dataclass
class Pairing:
    pairs: list[ImagePair]
    missing: list[str] = field(default_factory=list)  # in the ground truth, absent from the predictions
    extra: list[str] = field(default_factory=list)  # among the predictions, absent from the ground truth

    @property
    def skipped(self) -> int:
        return len(self.missing) + len(self.extra)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        shown = list_names(["/".join(p.name for p in names) for names in clashes])
        raise EvalError(f"{what} has several images with the same name and different extensions: {shown}")
    return {stem: paths[0] for stem, paths in by_stem.items()}


def pair_images(gt_dir: str | Path, pred_dir: str | Path, allow_missing: bool = False) -> Pairing:
    """Pair the images of two folders by file stem, in natural order.

    A view present on one side only is an error naming every such view, unless `allow_missing`, in which case
    the intersection is scored and the result lists what was left out.
    """
    gt = _by_stem(list_images(gt_dir, "ground-truth folder"), "ground-truth folder")
    pred = _by_stem(list_images(pred_dir, "prediction folder"), "prediction folder")
    missing = sorted(set(gt) - set(pred), key=natural_key)
    extra = sorted(set(pred) - set(gt), key=natural_key)
    if (missing or extra) and not allow_missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ground-truth view(s) have no prediction: {list_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) have no ground truth: {list_names(extra)}")
        raise EvalError(
            "the folders do not hold the same views; " + "; ".join(parts) + " (pass --allow-missing to score the views both hold)"
        )
    common = sorted(set(gt) & set(pred), key=natural_key)
    if not common:
        raise EvalError("the ground-truth and prediction folders share no view names")
    return Pairing([ImagePair(name, gt[name], pred[name]) for name in common], missing, extra)
