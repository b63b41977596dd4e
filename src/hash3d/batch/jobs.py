"""The job list as plain data: one `JobSpec` per (config, item), JSON-serialisable, and the plan that makes it.

A job spec says everything a worker needs and nothing about where it runs: no device, no process. Any dispatcher
can take the list: the local one (`dispatch.py`, one process per GPU), the Ray one (`ray_backend.py`, actors on a
cluster), or another engine calling `hash3d.batch.worker.execute(spec.to_dict(), gpu)` where it runs jobs.

`<out>/jobs.json` holds the list of the last invocation (`--dry-run` writes it without running anything).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import Kind, ViewSpec
from .items import Item


@dataclass(frozen=True)
class Variant:
    """One config of the batch (the main one, or the --compare-with twin)."""

    name: str
    """Folder name: the config's file stem."""
    config: str
    """Absolute path."""
    digest: str
    """SHA-256 of the resolved config with the batch's overrides (items left out): finished results made with
    another config are not mixed into the summary."""
    cache: bool | None
    """Whether the Hash3D cache is on in this config (None: the config has no cache block)."""
    label: str = ""
    """Column label in the summary ('cache on' / 'cache off', or the name)."""
    workdir: str = ""
    """Absolute path of the folder the config's relative paths are read from (its front-end folder; `paths.py`)."""


@dataclass(frozen=True)
class JobSpec:
    front_end: str
    variant: str
    config: str
    config_digest: str
    cache: bool | None
    item: str
    kind: Kind
    target: str
    """The prompt, or the absolute path of the input image."""
    overrides: tuple[str, ...]
    """The user's key=value overrides (the item's own are added by the front-end)."""
    views: ViewSpec
    out_dir: str
    """Absolute path of the item's folder: <out>/<variant>/<item>."""
    workdir: str = ""
    """The folder the job runs in, so that the config's relative paths resolve (its front-end folder); '': anywhere."""

    @property
    def job_id(self) -> str:
        return f"{self.variant}/{self.item}"

    def fingerprint(self) -> str:
        """What determines the result: everything but where the config file, its front-end folder and the output
        lie (the config's content is in config_digest), so a moved checkout or output folder keeps its finished items."""
        data = self.to_dict()
        for where in ("out_dir", "config", "workdir"):
            data.pop(where)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overrides"] = list(self.overrides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        data = dict(data)
        data["overrides"] = tuple(data["overrides"])
        data["views"] = ViewSpec(**data["views"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls.from_dict(json.loads(text))


def plan_jobs(
    front_end: str, variants: list[Variant], items: list[Item], out: Path, views: ViewSpec, overrides: tuple[str, ...]
) -> list[JobSpec]:
    """Item by item, every variant of an item next to each other (cache on and off of one item finish together)."""
    return [
        JobSpec(
            front_end=front_end,
            variant=v.name,
            config=v.config,
            config_digest=v.digest,
            cache=v.cache,
            item=item.id,
            kind=item.kind,
            target=item.target,
            overrides=tuple(overrides),
            views=views,
            out_dir=str((out / v.name / item.id).resolve()),
            workdir=v.workdir,
        )
        for item in items
        for v in variants
    ]


def write_job_list(path: Path, jobs: list[JobSpec]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([j.to_dict() for j in jobs], indent=1) + "\n")
    return path


def read_job_list(path: Path) -> list[JobSpec]:
    return [JobSpec.from_dict(d) for d in json.loads(Path(path).read_text())]
