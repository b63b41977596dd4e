"""A batch from its options to its summary: items, configs, the job list, the runs, the scores, the table."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hash3d.config.diff import config_diff

from .config import BatchConfig
from .dispatch import Outcome, Slot, make_dispatcher, make_slots
from .errors import BatchError
from .frontends import ConfigInfo, FrontEnd, get_front_end
from .items import Item, find_images, read_prompts
from .jobs import JobSpec, Variant, plan_jobs, write_job_list
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
    if cfg.kind not in front_end.kinds:
        raise BatchError(f"{front_end.name} is {' and '.join(front_end.kinds)}-to-3D only: "
                         + ("give --images DIR" if cfg.kind == "text" else "give --prompts FILE"))  # fmt: skip
    paths = [front_end.resolve_config(cfg.config)]
    if cfg.compare_with:
        paths.append(front_end.resolve_config(cfg.compare_with))
        if paths[0] == paths[1]:
            raise BatchError(f"--compare-with is the same config as --config ({paths[0]})")
    infos: list[ConfigInfo] = []
    for path in paths:
        info = front_end.inspect(path, cfg.overrides)
        if cfg.kind not in info.kinds:
            flag = "--images DIR" if "image" in info.kinds else "--prompts FILE"
            given = "--prompts" if cfg.kind == "text" else "--images"
            raise BatchError(f"{path.name} is a {'/'.join(info.kinds)}-to-3D config: give {flag} (not {given})")
        infos.append(info)
    names = [p.stem for p in paths]
    if len(names) == 2 and names[0] == names[1]:
        names[1] += "-compare"
    labels = list(names)
    if len(infos) == 2 and bool(infos[0].cache) != bool(infos[1].cache):
        labels = ["cache on" if i.cache else "cache off" for i in infos]
    variants = [Variant(n, str(p), i.digest, i.cache, label) for n, p, i, label in zip(names, paths, infos, labels)]
    notes = []
    if len(infos) == 2:
        diffs = config_differences(infos[1].data, infos[0].data)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; … and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            notes.append(f"{paths[1].name} and {paths[0].name} differ beyond the cache: {shown}")
    # the compared (usually cache-off) config first: columns read off | on
    return variants[::-1] if len(variants) == 2 else variants, notes


class ConsoleEvents:
    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr

    def started(self, job: JobSpec, slot: Slot) -> None:
        print(f"[batch] start {job.job_id} on {slot.label}", file=self.stream, flush=True)

    def ended(self, outcome: Outcome) -> None:
        self.done += 1
        head = f"[batch] {self.done}/{self.total} {outcome.job.job_id}"
        if outcome.status == "done":
            r = outcome.result or {}
            cache = r.get("cache") or {}
            extra = f", hit rate {100 * cache['hit_rate']:.1f}%" if "hit_rate" in cache else ""
            it_s = r.get("it_s")
            speed = f", {it_s:.2f} it/s" if it_s else ""
            print(f"{head}: done in {outcome.seconds:.1f} s (training {r.get('train_s', 0):.1f} s{speed}{extra})",
                  file=self.stream, flush=True)  # fmt: skip
        else:
            log = f" (log: {outcome.log})" if outcome.log and outcome.status == "failed" else ""
            print(f"{head}: {outcome.status}: {outcome.error}{log}", file=self.stream, flush=True)


def default_out(cfg: BatchConfig) -> Path:
    return Path("outputs") / "batch" / cfg.front_end / Path(cfg.config).stem


def run_batch(cfg: BatchConfig, stream: TextIO | None = None) -> BatchReport:
    stream = stream or sys.stderr
    front_end = get_front_end(cfg.front_end)
    front_end.check_overrides(cfg.overrides)
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
        write_job_list(out / "jobs.json", jobs)
        return report

    slots = make_slots(cfg.jobs, cfg.gpus)
    with BatchLock(out):
        write_job_list(out / "jobs.json", jobs)
        todo = [j for j in jobs if not ItemDir(j).finished()]  # also refuses results made with other settings
        report.skipped = len(jobs) - len(todo)
        if report.skipped:
            print(f"[batch] {report.skipped} of {len(jobs)} job(s) finished earlier: skipped", file=stream, flush=True)
        if todo:
            dispatcher = make_dispatcher(slots, cfg.isolate, out / "logs", cfg.fail_fast)
            report.outcomes = dispatcher.run(todo, ConsoleEvents(len(todo), stream))
        scorer = Scorer(score) if score.clip_model or score.gt_dir else None
        rows, markdown, files = write_summary(out, jobs, variants, scorer, views, front_end.name, notes)
    report.rows, report.markdown, report.files = rows, markdown, files
    report.complete = all(r.complete() for r in rows) and not (scorer and scorer.incomplete)
    return report


def dry_run_text(report: BatchReport) -> str:
    return json.dumps([j.to_dict() for j in report.jobs], indent=1)
