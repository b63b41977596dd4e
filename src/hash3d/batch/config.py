"""Typed options of a batch run (the command line fills these in; `cli.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

Kind = Literal["text", "image"]
Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class ViewSpec:
    """The evaluation views rendered after each run: `n_views` azimuths evenly spaced over 360° (no repeated end
    view), starting at the input view's azimuth for image-to-3D, at one elevation (degrees, positive = camera above
    the object, threestudio's convention), square or the front-end's evaluation size when `size` is None."""

    n_views: int
    elevation_deg: float
    size: int | None = None

    @classmethod
    def paper(cls, kind: Kind) -> "ViewSpec":
        """The paper's protocol: 8 views at elevation 0° for text-to-3D, 16 views at elevation 30° for image-to-3D."""
        return cls(8, 0.0) if kind == "text" else cls(16, 30.0)

    def with_options(self, n_views: int | None, elevation_deg: float | None, size: int | None) -> "ViewSpec":
        return replace(
            self,
            n_views=self.n_views if n_views is None else n_views,
            elevation_deg=self.elevation_deg if elevation_deg is None else elevation_deg,
            size=self.size if size is None else size,
        )


@dataclass(frozen=True)
class ScoreConfig:
    """How the rendered views are scored (in the parent process, after the runs, each model loaded once)."""

    clip_model: str | None = None
    """CLIP hub id, folder or short name (hash3d.eval.CLIP_MODEL_ALIASES); None: no CLIP score."""
    clip_optional: bool = False
    """The default model, not asked for by name: when it cannot be had (offline, not in the Hugging Face cache) the
    CLIP score is skipped with one note and the batch still counts as complete."""
    gt_dir: Path | None = None
    """Image-to-3D ground truth: GT_DIR/<item>/000.png … paired by name with the rendered views."""
    lpips_net: str | None = "vgg"
    """LPIPS backbone for --gt (None: PSNR and SSIM only)."""
    device: str = "auto"
    background: str = "white"


@dataclass(frozen=True)
class BatchConfig:
    front_end: str
    config: str
    """The config as given (resolved against the working folder, then the front-end's folder)."""
    prompts: Path | None = None
    images: Path | None = None
    out: Path | None = None
    """Output folder (None: outputs/batch/<front-end>/<config stem>)."""
    compare_with: str | None = None
    """A second config run over the same items (the cache-off twin), reported side by side."""
    overrides: tuple[str, ...] = ()
    """key=value overrides given to every run of both configs."""
    jobs: int | None = None
    """Jobs at once (None: local 1; Ray one per GPU of the cluster, 1 on a cluster without GPUs)."""
    backend: Backend = "local"
    """'local': this machine's GPUs (`dispatch.py`); 'ray': a Ray cluster (`ray_backend.py`)."""
    address: str | None = None
    """Ray cluster address ('auto', 'ray://HOST:PORT'); None: RAY_ADDRESS, else a local cluster started for the batch."""
    retries: int = 2
    """Ray: times a job whose worker died (or ran out of GPU memory) is run again on a fresh worker."""
    gpus: tuple[int, ...] | None = None
    """GPU indices to use (None: every visible GPU; empty: the CPU)."""
    isolate: bool = False
    """Run each job in a fresh worker process even with one job at a time."""
    limit: int | None = None
    """Only the first N items."""
    n_views: int | None = None
    elevation_deg: float | None = None
    view_size: int | None = None
    score: ScoreConfig = field(default_factory=ScoreConfig)
    fail_fast: bool = False
    dry_run: bool = False

    @property
    def kind(self) -> Kind:
        return "image" if self.images is not None else "text"

    def views(self) -> ViewSpec:
        return ViewSpec.paper(self.kind).with_options(self.n_views, self.elevation_deg, self.view_size)
