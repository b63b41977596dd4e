"""Batch runs: a front-end over a list of prompts or images, evaluation views, scores and one summary table.

    python -m hash3d.batch --front-end threestudio-hash3d --config configs/dreamfusion-sd_hash3d.yaml \\
        --prompts assets/prompt.txt --compare-with configs/dreamfusion-sd.yaml [--jobs N] [key=value ...]

Modules: `config` (typed options), `items` (prompts, images, ids), `jobs` (the job list as plain data),
`paths` (where a config's relative paths point, checked before anything runs), `frontends` (how each front-end
trains and renders), `worker` (one job), `dispatch` (where jobs run on this machine), `ray_backend` (on a Ray
cluster, `--backend ray`), `state` (item folders and resume markers), `scoring` (hash3d.eval), `summary` (the
table), `runner`, `cli`.
"""

from .config import BatchConfig, ScoreConfig, ViewSpec
from .errors import BatchError
from .jobs import JobSpec, Variant, plan_jobs, read_job_list

__all__ = ["BatchConfig", "BatchError", "JobSpec", "ScoreConfig", "Variant", "ViewSpec", "plan_jobs", "read_job_list"]
