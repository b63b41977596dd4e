"""A batch from its options to its summary: items, configs, the job list, the runs, the scores, the table."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from hash3d.config.diff import config_diff

from .config import BatchConfig
from .dispatch import Dispatcher, Outcome, Slot, make_dispatcher, make_slots
from .errors import BatchError
from .frontends import PLACEHOLDER, ConfigInfo, FrontEnd, get_front_end
from .items import Item, find_images, read_prompts
from .jobs import JobSpec, Variant, plan_jobs, write_job_list
from .paths import absolute_overrides, check_paths, front_end_workdir, named_paths
from .scoring import Scorer
from .state import BatchLock, ItemDir
from .summary import ItemRow, write_summary


@dataclass
class BatchReport:
    jobs: list[JobSpec]
    rows: list[ItemRow] = field(default_factory=list)
    markdown: str = ""
    files: list[Path] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: int = 0
    complete: bool = False
    """Every job finished and every asked-for metric was computed."""


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ, leaving out name / tag / description and anything inside a cache block."""
    return config_diff(a, b, lambda k: k.split(".")[0] in ("name", "tag", "description") or "cache" in k.split("."))


def load_items(cfg: BatchConfig) -> tuple[list[Item], list[str]]:
    if (cfg.prompts is None) == (cfg.images is None):
        raise BatchError("give either --prompts FILE (text-to-3D) or --images DIR (image-to-3D)")
    items, notes = read_prompts(cfg.prompts) if cfg.prompts is not None else find_images(cfg.images)  # type: ignore[arg-type]
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise BatchError(f"--limit {cfg.limit}: must be at least 1")
        if cfg.limit < len(items):
            notes.append(f"--limit {cfg.limit}: the first {cfg.limit} of {len(items)} items")
            items = items[: cfg.limit]
    return items, notes


def load_variants(front_end: FrontEnd, cfg: BatchConfig) -> tuple[list[Variant], list[str]]:
    """The config(s) of the batch, checked: they load with the overrides, take the batch's kind of item, and every
    local path they name is there (read from the config's front-end folder). Notes: the differences between the
    two configs, hub models that each run would download."""
    if cfg.kind not in front_end.kinds:
        raise BatchError(f"{front_end.name} is {' and '.join(front_end.kinds)}-to-3D only: "
                         + ("give --images DIR" if cfg.kind == "text" else "give --prompts FILE"))  # fmt: skip
    paths = [front_end.resolve_config(cfg.config)]
    if cfg.compare_with:
        paths.append(front_end.resolve_config(cfg.compare_with))
        if paths[0] == paths[1]:
            raise BatchError(f"--compare-with is the same config as --config ({paths[0]})")
    infos: list[ConfigInfo] = []
    workdirs: list[Path] = []
    notes: list[str] = []
    for path in paths:
        info = front_end.inspect(path, cfg.overrides)
        if cfg.kind not in info.kinds:
            flag = "--images DIR" if "image" in info.kinds else "--prompts FILE"
            given = "--prompts" if cfg.kind == "text" else "--images"
            raise BatchError(f"{path.name} is a {'/'.join(info.kinds)}-to-3D config: give {flag} (not {given})")
        workdir = front_end_workdir(path, front_end.name, front_end.folder())
        named = named_paths(info.data, workdir, front_end.reserved, (PLACEHOLDER,))
        notes += [n for n in check_paths(path, named, workdir) if n not in notes]
        infos.append(info)
        workdirs.append(workdir)
    names = [p.stem for p in paths]
    if len(names) == 2 and names[0] == names[1]:
        names[1] += "-compare"
    labels = list(names)
    if len(infos) == 2 and bool(infos[0].cache) != bool(infos[1].cache):
        labels = ["cache on" if i.cache else "cache off" for i in infos]
    variants = [Variant(n, str(p), i.digest, i.cache, label, str(w))
                for n, p, i, label, w in zip(names, paths, infos, labels, workdirs)]  # fmt: skip
    if len(infos) == 2:
        diffs = config_differences(infos[1].data, infos[0].data)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; … and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            notes.append(f"{paths[1].name} and {paths[0].name} differ beyond the cache: {shown}")
    # the compared (usually cache-off) config first: columns read off | on
    return variants[::-1] if len(variants) == 2 else variants, notes


class ConsoleEvents:
    """One line per started and finished job (with the ETA of the rest), a line per retry, and a progress bar when
    the stream is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None):
        from tqdm import tqdm

        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.t0 = time.monotonic()
        self.bar = tqdm(total=total, unit="job", file=self.stream, disable=None, leave=False, dynamic_ncols=True)

    def _line(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def started(self, job: JobSpec, slot: Slot) -> None:
        self._line(f"[batch] start {job.job_id} on {slot.label}")

    def retrying(self, job: JobSpec, error: str, attempt: int, attempts: int) -> None:
        self._line(f"[batch] {job.job_id}: {error}: running it again on a fresh worker (try {attempt} of {attempts})")

    def eta(self) -> str:
        left = self.total - self.done
        if not left or not self.done:
            return ""
        seconds = (time.monotonic() - self.t0) / self.done * left
        return f"; ETA {seconds / 60:.0f} min" if seconds >= 90 else f"; ETA {seconds:.0f} s"

    def ended(self, outcome: Outcome) -> None:
        self.done += 1
        self.bar.update(1)
        head = f"[batch] {self.done}/{self.total} {outcome.job.job_id}"
        if outcome.status == "done":
            r = outcome.result or {}
            cache = r.get("cache") or {}
            extra = f", hit rate {100 * cache['hit_rate']:.1f}%" if "hit_rate" in cache else ""
            it_s = r.get("it_s")
            speed = f", {it_s:.2f} it/s" if it_s else ""
            kept = ", model kept loaded" if r.get("models_reused") else ""
            self._line(f"{head}: done in {outcome.seconds:.1f} s (training {r.get('train_s', 0):.1f} s{speed}{extra}"
                       f"{kept}){self.eta()}")  # fmt: skip
        else:
            log = f" (log: {outcome.log})" if outcome.log and outcome.status == "failed" else ""
            self._line(f"{head}: {outcome.status}: {outcome.error}{log}{self.eta()}")
        if self.done == self.total:
            self.bar.close()


def make_backend(cfg: BatchConfig, out: Path) -> Dispatcher:
    """The dispatcher of --backend (Ray is imported only for 'ray')."""
    if cfg.backend == "ray":
        from .ray_backend import RayDispatcher

        return RayDispatcher(cfg.address, cfg.jobs, cfg.retries, out / "logs", cfg.fail_fast)
    return make_dispatcher(make_slots(cfg.jobs or 1, cfg.gpus), cfg.isolate, out / "logs", cfg.fail_fast)


def check_backend(cfg: BatchConfig) -> None:
    if cfg.backend == "ray":
        from .ray_backend import import_ray

        if cfg.gpus is not None:
            raise BatchError("--gpus is for --backend local: on Ray every worker gets a GPU of the cluster (limit "
                             "them with --jobs N, or with the GPUs the cluster's nodes offer)")  # fmt: skip
        if cfg.isolate:
            raise BatchError("--isolate is for --backend local: Ray workers are processes of their own already")
        if cfg.retries < 0:
            raise BatchError(f"--retries {cfg.retries}: must be 0 or more")
        import_ray()
    elif cfg.address is not None:
        raise BatchError("--address names a Ray cluster: use it with --backend ray")


def default_out(cfg: BatchConfig) -> Path:
    return Path("outputs") / "batch" / cfg.front_end / Path(cfg.config).stem


def run_batch(cfg: BatchConfig, stream: TextIO | None = None) -> BatchReport:
    stream = stream or sys.stderr
    front_end = get_front_end(cfg.front_end)
    front_end.check_overrides(cfg.overrides)
    check_backend(cfg)
    cfg = replace(cfg, overrides=absolute_overrides(cfg.overrides))  # read where the command was typed
    views = cfg.views()
    if views.n_views < 1 or (views.size is not None and views.size < 8):
        raise BatchError("--views must be at least 1 and --view-size at least 8")
    score = cfg.score
    if score.gt_dir is not None:
        if cfg.kind != "image":
            raise BatchError("--gt holds ground-truth views of image-to-3D items: use it with --images")
        if not score.gt_dir.is_dir():
            raise BatchError(f"--gt {score.gt_dir}: not a folder (give GT_DIR with one folder of views per item)")
    items, notes = load_items(cfg)
    variants, config_notes = load_variants(front_end, cfg)
    notes += config_notes
    out = (cfg.out or default_out(cfg)).resolve()
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out {out} is a file")
    jobs = plan_jobs(front_end.name, variants, items, out, views, cfg.overrides)
    report = BatchReport(jobs)
    if cfg.dry_run:
        clip_note = Scorer(score).availability_note()
        for note in notes + ([clip_note] if clip_note else []):
            print(f"[batch] note: {note}", file=stream, flush=True)
        write_job_list(out / "jobs.json", jobs)
        return report

    dispatcher = make_backend(cfg, out)
    with BatchLock(out):
        write_job_list(out / "jobs.json", jobs)
        todo = [j for j in jobs if not ItemDir(j).finished()]  # also refuses results made with other settings
        report.skipped = len(jobs) - len(todo)
        if report.skipped:
            print(f"[batch] {report.skipped} of {len(jobs)} job(s) finished earlier: skipped", file=stream, flush=True)
        if todo:
            report.outcomes = dispatcher.run(todo, ConsoleEvents(len(todo), stream))
        scorer = Scorer(score) if score.clip_model or score.gt_dir else None
        rows, markdown, files = write_summary(out, jobs, variants, scorer, views, front_end.name, notes)
    report.rows, report.markdown, report.files = rows, markdown, files
    report.complete = all(r.complete() for r in rows) and not (scorer and scorer.incomplete)
    return report


def dry_run_text(report: BatchReport) -> str:
    return json.dumps([j.to_dict() for j in report.jobs], indent=1)
