"""python -m hash3d.batch --backend ray on a local Ray cluster (2 CPUs, workers as CPU actors): two prompts with the
cache on and off (4 jobs) while worker processes are killed mid-item (one job is retried and finishes, one runs out
of tries and is marked failed), a rerun that resumes (only the failed job runs again), the same summary rows as the
local backend, models kept loaded between items, and the error without Ray installed."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hash3d.batch.cli import build_parser, main, to_config
from hash3d.batch.runner import run_batch
from hash3d.config import load_config, smoke_overrides

ROOT = Path(__file__).resolve().parents[1]
HASHED, PLAIN = "configs/dreamfusion-sd_hash3d.yaml", "configs/dreamfusion-sd.yaml"
PROMPTS = ["a hamburger", "a red fox"]
RETRIED, EXHAUSTED = "dreamfusion-sd_hash3d/a_hamburger", "dreamfusion-sd/a_hamburger"
"""The first job of each worker: killed once (retried, finishes) and twice (--retries 1: marked failed). A free
worker takes the next job of its config, so the retried job's fresh worker then runs dreamfusion-sd_hash3d/a_red_fox
with the model it loaded for the first."""
KEPT = "dreamfusion-sd_hash3d/a_red_fox"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_machine_each_worker_takes_a_gpu_and_keeps_its_model(tmp_path, written_models):
    """Runs first, before this module starts its CPU-only cluster: the batch starts its own, with the GPUs."""
    pytest.importorskip("ray")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("dog1_rgba.png", "mug_rgba.png"):
        shutil.copy(ROOT / "threestudio-hash3d" / "load" / "images" / name, images / name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hash3d.batch", "--front-end", "dreamgaussian-hash3d", "--config",
           "configs/image_sai_hash3d.yaml", "--images", str(images), "--out", str(out), "--backend", "ray", "--address",
           "local",
           "--clip-model", "none", "--views", "2", f"guidance.pretrained_model_name_or_path={written_models['zero123']}",
           "iters=4", "num_pts=500", "mesh_resolution=32", "texture_size=64"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    started = [read(p) for p in sorted(out.glob("image_sai_hash3d/*/started.json"))]
    assert [s["device"] for s in started] == ["cuda:0", "cuda:0"]
    results = [read(p) for p in sorted(out.glob("image_sai_hash3d/*/result.json"))]
    if torch.cuda.device_count() == 1:  # one worker ran both: the second item took the model from memory
        assert sorted(r["models_reused"] for r in results) == [0, 1]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")  # in the test extra
    # address="local": a new instance of our own, never another process's cluster on a shared machine
    ray.init(address="local", num_cpus=2, num_gpus=0, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from hash3d.testing.clip import write_clip
    from hash3d.testing.models import write_model

    root = tmp_path_factory.mktemp("ray_batch")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    sd = str(write_model("sd", "tiny", root / "sd"))
    cfg, _ = load_config(ROOT / "threestudio-hash3d" / HASHED, [])
    overrides = [*smoke_overrides(cfg, steps=2, size=32, test_views=2), f"system.guidance.pretrained_model_name_or_path={sd}",
                 "system.renderer.num_samples_per_ray=32", "system.guidance.cache.policy.probability=1.0",
                 "system.guidance.cache.adaptive=false", "system.guidance.cache.cell_size=[180,360,10,1000]"]  # fmt: skip
    args = ["--front-end", "threestudio-hash3d", "--config", HASHED, "--compare-with", PLAIN, "--prompts", str(prompts),
            "--clip-model", str(write_clip(root / "clip")), "--views", "2", *overrides]  # fmt: skip
    return {"root": root, "args": args}


def run_in_thread(args: list[str]) -> tuple[threading.Thread, dict]:
    box: dict = {"stream": io.StringIO()}

    def target():
        box["report"] = run_batch(to_config(build_parser().parse_intermixed_args(args)), box["stream"])

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def ray_run(cluster, setup) -> dict:
    """The batch on Ray with 2 workers; the worker running RETRIED is killed once, the one running EXHAUSTED on
    each of its 2 tries."""
    out = setup["root"] / "ray"
    thread, box = run_in_thread([*setup["args"], "--out", str(out), "--backend", "ray", "--jobs", "2", "--retries", "1"])
    plan = {RETRIED: 1, EXHAUSTED: 2}
    killed: dict[str, list[int]] = {job: [] for job in plan}
    deadline = time.monotonic() + 600
    while thread.is_alive() and time.monotonic() < deadline:
        for job, times in plan.items():
            started = read(out / job / "started.json")
            if len(killed[job]) < times and started and started["pid"] not in killed[job]:
                if not (out / job / "result.json").exists():
                    os.kill(started["pid"], signal.SIGKILL)  # the whole worker process, mid-item
                    killed[job].append(started["pid"])
        time.sleep(0.05)
    thread.join(timeout=5)
    assert not thread.is_alive()
    return {"out": out, "killed": killed, "stderr": box["stream"].getvalue(), "report": box["report"]}


@pytest.fixture(scope="module")
def local_run(setup) -> Path:
    out = setup["root"] / "local"
    assert main([*setup["args"], "--out", str(out)]) == 0  # one torch thread (conftest), as a Ray worker with one CPU
    return out


@pytest.mark.slow
def test_killed_workers_are_replaced_and_their_jobs_retried_then_failed(ray_run):
    out, err, report = ray_run["out"], ray_run["stderr"], ray_run["report"]
    assert [len(v) for v in ray_run["killed"].values()] == [1, 2], err
    assert f"{RETRIED}: the Ray worker running the job died" in err and "(try 2 of 2)" in err
    assert not report.complete
    statuses = {o.job.job_id: o.status for o in report.outcomes}
    assert statuses[RETRIED] == "done" and statuses[EXHAUSTED] == "killed" and len(statuses) == 4
    retried = read(out / RETRIED / "started.json")
    assert retried["pid"] not in ray_run["killed"][RETRIED]  # finished on a fresh worker
    summary = read(out / "summary.json")
    runs = {(i["item"], v): r for i in summary["items"] for v, r in i["runs"].items()}
    failed = runs[("a_hamburger", "dreamfusion-sd")]
    assert failed["status"] == "failed" and "the Ray worker running the job died" in failed["error"]
    assert "tried 2 time(s)" in [o for o in report.outcomes if o.job.job_id == EXHAUSTED][0].error
    assert sum(r["status"] == "finished" for r in runs.values()) == 3
    assert (out / "logs" / "dreamfusion-sd_hash3d" / "a_hamburger.log").is_file()  # each job's output on the shared root


@pytest.mark.slow
def test_rerun_resumes_and_gives_the_local_backends_rows(ray_run, local_run, setup):
    out = ray_run["out"]
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    assert len(finished) == 3
    thread, box = run_in_thread([*setup["args"], "--out", str(out), "--backend", "ray", "--jobs", "2"])
    thread.join(timeout=600)
    report, err = box["report"], box["stream"].getvalue()
    assert report.complete, err
    assert "3 of 4 job(s) finished earlier: skipped" in err
    assert [o.job.job_id for o in report.outcomes] == [EXHAUSTED]  # only the failed job ran again
    assert {p: p.stat().st_mtime_ns for p in finished} == finished

    ray_summary, local_summary = read(out / "summary.json"), read(local_run / "summary.json")
    assert ray_summary["variants"] == local_summary["variants"] and ray_summary["metrics"] == local_summary["metrics"]
    assert len(ray_summary["items"]) == len(local_summary["items"]) == 2
    timing = {"train_s", "it_s", "run_s", "views_s"}
    for a, b in zip(ray_summary["items"], local_summary["items"]):
        assert (a["item"], a["label"]) == (b["item"], b["label"])
        for variant, run in a["runs"].items():
            other = b["runs"][variant]
            assert set(run) == set(other) and run["status"] == other["status"] == "finished"
            assert run["steps"] == other["steps"] == 2 and run["clip_views"] == other["clip_views"] == 2
            for key in timing:
                assert run[key] > 0 and other[key] > 0
            if variant == "dreamfusion-sd":  # cache off: the same computation, so the same views and scores
                assert {k: v for k, v in run.items() if k not in timing} == {k: v for k, v in other.items() if k not in timing}
            else:
                assert run["hit_rate"] > 0 and other["hit_rate"] > 0
    for name in ("summary.md", "summary.csv"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_a_worker_keeps_the_model_loaded_between_items(ray_run):
    results = {f"{p.parent.parent.name}/{p.parent.name}": read(p) for p in ray_run["out"].glob("*/*/result.json")}
    assert results[RETRIED]["models_reused"] == 0  # its worker was fresh: it loaded the model from disk
    assert results[KEPT]["models_reused"] > 0, ray_run["stderr"]  # the same worker, next item: from memory
    assert "a_red_fox: done in" in ray_run["stderr"] and "model kept loaded" in ray_run["stderr"]


def test_resident_models_are_loaded_once_and_handed_out_as_copies(written_models):
    from hash3d.diffusion.loading import load_stable_diffusion
    from hash3d.diffusion.resident import ResidentModels, keep_loaded

    models = ResidentModels()
    with keep_loaded(models):
        a = load_stable_diffusion(written_models["sd"])
        a.unet.conv_in.weight.data.add_(1.0)  # a run changing its copy
        b = load_stable_diffusion(written_models["sd"])
        models.end_run()
        assert (models.loads, models.reuses, len(models)) == (1, 1, 1)
        assert b.unet is not a.unet
        models.end_run()  # a run that used no model: the kept one is dropped
        assert len(models) == 0
    outside = load_stable_diffusion(written_models["sd"])
    assert torch.equal(outside.unet.conv_in.weight, b.unet.conv_in.weight)  # the copy was as loaded
    assert not torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)


def test_ray_backend_without_ray_is_one_clear_error_and_local_needs_no_ray(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    base = ["--front-end", "threestudio-hash3d", "--config", HASHED, "--prompts", str(prompts), "--clip-model", "none",
            "--dry-run"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a"), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--backend ray needs Ray, which is not installed" in err and 'pip install -e ".[ray]"' in err
    assert err.count("\n") == 1 and not (tmp_path / "a").exists()
    assert main([*base, "--out", str(tmp_path / "b")]) == 0  # --backend local (the default) never imports Ray
    assert main([*base, "--out", str(tmp_path / "c"), "--address", "auto"]) == 2
    assert "--address names a Ray cluster: use it with --backend ray" in capsys.readouterr().err
