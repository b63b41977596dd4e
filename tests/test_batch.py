"""python -m hash3d.batch: two prompts through threestudio-hash3d with a tiny written SD and CLIP (cache on and off
side by side), resume after an unfinished item and after a killed worker process, image-to-3D with
dreamgaussian-hash3d scored against ground truth, the job list as plain data, and every bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hash3d.batch.cli import main
from hash3d.batch.dispatch import Slot, make_slots
from hash3d.batch.errors import BatchError
from hash3d.batch.frontends.base import quote
from hash3d.batch.items import MAX_SLUG, assign_ids, read_prompts, slugify
from hash3d.batch.jobs import read_job_list
from hash3d.config import load_config, smoke_overrides

ROOT = Path(__file__).resolve().parents[1]
TS_CONFIGS = ROOT / "threestudio-hash3d" / "configs"
HASHED, PLAIN = "configs/dreamfusion-sd_hash3d.yaml", "configs/dreamfusion-sd.yaml"
LONG_PROMPT = "a wizard's hat: covered in silver stars, resting on an old oak table next to a candle, #1"
PROMPTS = ["a hamburger", LONG_PROMPT]
# every UNet call tries the cache and the cells are wide, so the second of two steps is a hit
HIT_FRIENDLY = [
    "system.guidance.cache.policy.probability=1.0",
    "system.guidance.cache.adaptive=false",
    "system.guidance.cache.cell_size=[180,360,10,1000]",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from hash3d.testing.clip import write_clip
    from hash3d.testing.models import write_model

    root = tmp_path_factory.mktemp("batch_models")
    return {"sd": str(write_model("sd", "tiny", root / "sd")), "clip": str(write_clip(root / "clip"))}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# two prompts\n\n" + "\n".join(PROMPTS) + "\na hamburger\n")  # the repeat runs once
    return path


def text_overrides(sd: str) -> list[str]:
    cfg, _ = load_config(TS_CONFIGS / "dreamfusion-sd_hash3d.yaml", [])
    return [
        *smoke_overrides(cfg, steps=2, size=32, test_views=2),
        f"system.guidance.pretrained_model_name_or_path={sd}",
        "system.renderer.num_samples_per_ray=32",
        *HIT_FRIENDLY,
    ]


def text_args(prompts: Path, models: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--front-end", "threestudio-hash3d", "--config", HASHED, "--prompts", str(prompts), "--out", str(out),
            "--clip-model", models["clip"], *extra, *text_overrides(models["sd"])]  # fmt: skip


def results(out: Path) -> dict[str, float]:
    """job id -> modification time of its result.json."""
    return {f"{p.parent.parent.name}/{p.parent.name}": p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, models, prompts) -> Path:
    """Both prompts, cache on (dreamfusion-sd_hash3d) and off (dreamfusion-sd), in this process."""
    out = tmp_path_factory.mktemp("batch") / "out"
    assert main(text_args(prompts, models, out, "--compare-with", PLAIN)) == 0
    return out


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_summary_has_both_items_cache_off_and_on_side_by_side(compared):
    summary = json.loads((compared / "summary.json").read_text())
    assert summary["n_items"] == 2 and summary["n_complete"] == 2 and summary["metrics"] == ["clip"]
    assert [(v["name"], v["label"], v["cache"]) for v in summary["variants"]] == [
        ("dreamfusion-sd", "cache off", False), ("dreamfusion-sd_hash3d", "cache on", True)]  # fmt: skip
    assert [i["label"] for i in summary["items"]] == PROMPTS
    for item in summary["items"]:
        off, on = item["runs"]["dreamfusion-sd"], item["runs"]["dreamfusion-sd_hash3d"]
        for run in (off, on):
            assert run["status"] == "finished" and run["steps"] == 2 and run["train_s"] > 0 and run["it_s"] > 0
            assert -1.0 <= run["clip"] <= 1.0 and run["clip_views"] == 8
        assert on["hit_rate"] > 0 and on["unet_calls_saved"] >= 1
        assert off["hit_rate"] is None and off["unet_calls_saved"] is None
        assert item["speedup"] == pytest.approx(off["train_s"] / on["train_s"])
    mean = summary["mean"]["dreamfusion-sd_hash3d"]
    assert mean["clip"] == pytest.approx(np.mean([i["runs"]["dreamfusion-sd_hash3d"]["clip"] for i in summary["items"]]))
    assert summary["speedup"] > 0

    markdown = (compared / "summary.md").read_text()
    assert "| a hamburger |" in markdown and "a wizard's hat: covered in silver stars" in markdown
    for header in ("time s (cache off)", "time s (cache on)", "speed-up", "hit rate (cache on)", "CLIP (cache off)",
                   "CLIP (cache on)", "**mean** (2 of 2)"):  # fmt: skip
        assert header in markdown
    with open(compared / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["item"] for r in rows].count("mean") == 2 and len(rows) == 6


@pytest.mark.slow
def test_item_folders_have_short_names_views_and_markers(compared):
    ids = sorted(p.name for p in (compared / "dreamfusion-sd_hash3d").iterdir())
    long_id = next(i for i in ids if i.startswith("a_wizard"))
    assert "a_hamburger" in ids and len(long_id) <= MAX_SLUG + 9 and "-" in long_id  # cut, with a hash suffix
    item = compared / "dreamfusion-sd_hash3d" / long_id
    assert {"started.json", "job.json", "result.json", "scores.json", "clip.json"} <= {p.name for p in item.iterdir()}
    trial = item / "run" / "dreamfusion-sd-hash3d" / long_id
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert not (trial / "save" / "it2-test.mp4").exists()  # the launcher's own test video is off in batches
    parsed = (trial / "configs" / "parsed.yaml").read_text()
    assert "prompt: 'a wizard''s hat: covered in silver stars" in parsed  # ':', ',', '#', quotes passed unchanged
    views = sorted((item / "views").iterdir())
    assert [v.name for v in views] == [f"{i:03d}.png" for i in range(8)]
    assert all(Image.open(v).size == (32, 32) and Image.open(v).mode == "RGB" for v in views)
    jobs = read_job_list(compared / "jobs.json")  # the job list as plain data, as a cluster engine would take it
    assert len(jobs) == 4 and {j.views.n_views for j in jobs} == {8} and {j.views.elevation_deg for j in jobs} == {0.0}


@pytest.mark.slow
def test_rerun_skips_finished_items_and_refuses_other_settings(compared, models, prompts, capsys):
    before = results(compared)
    assert main(text_args(prompts, models, compared, "--compare-with", PLAIN)) == 0
    assert results(compared) == before
    assert "4 of 4 job(s) finished earlier: skipped" in capsys.readouterr().err
    # the same folder with other settings: refused, nothing redone
    assert main(text_args(prompts, models, compared, "--compare-with", PLAIN, "--views", "4")) == 2
    assert "finished run made with other settings" in capsys.readouterr().err
    assert results(compared) == before


@pytest.mark.slow
def test_resume_redoes_only_the_unfinished_item(compared, models, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(compared, out)
    before = results(out)
    # simulate a job killed mid-run: started, a partial trial folder, no result
    item = out / "dreamfusion-sd_hash3d" / "a_hamburger"
    (item / "result.json").unlink()
    (item / "run" / "partial.txt").write_text("left by a killed run")
    assert main(text_args(prompts, models, out, "--compare-with", PLAIN)) == 0
    assert "3 of 4 job(s) finished earlier: skipped" in capsys.readouterr().err
    after = results(out)
    redone = [k for k in after if after[k] != before[k]]
    assert redone == ["dreamfusion-sd_hash3d/a_hamburger"]
    assert not (item / "run" / "partial.txt").exists()  # redone from scratch
    assert json.loads((out / "summary.json").read_text())["n_complete"] == 2


@pytest.mark.slow
def test_killed_worker_process_is_reported_and_redone(models, prompts, tmp_path):
    out = tmp_path / "out"
    args = text_args(prompts, models, out, "--isolate")
    args[args.index("--clip-model") + 1] = "none"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hash3d.batch", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    started = out / "dreamfusion-sd_hash3d" / "a_hamburger" / "started.json"
    deadline = time.monotonic() + 120
    while not started.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.2)  # let the worker finish writing the marker
    os.kill(json.loads(started.read_text())["pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "a_hamburger: killed: the worker process was killed (SIGKILL)" in stderr
    summary = json.loads((out / "summary.json").read_text())
    runs = {i["item"]: i["runs"]["dreamfusion-sd_hash3d"] for i in summary["items"]}
    assert runs["a_hamburger"]["status"] == "failed" and "SIGKILL" in runs["a_hamburger"]["error"]
    other = next(k for k in runs if k != "a_hamburger")
    assert runs[other]["status"] == "finished" and "Not finished" in stdout
    assert (out / "logs" / "dreamfusion-sd_hash3d" / f"{other}.log").is_file()

    before = results(out)
    assert main([a for a in args if a != "--isolate"]) == 0  # the next invocation (here) redoes only the killed item
    after = results(out)
    assert set(after) == {"dreamfusion-sd_hash3d/a_hamburger", f"dreamfusion-sd_hash3d/{other}"}
    assert after[f"dreamfusion-sd_hash3d/{other}"] == before[f"dreamfusion-sd_hash3d/{other}"]


# ------------------------------------------------------------------------------------------------ image-to-3D
@pytest.mark.slow
def test_images_through_dreamgaussian_scored_against_ground_truth(tmp_path, models, capsys):
    from hash3d.testing.models import write_model

    zero123 = write_model("zero123", "tiny", tmp_path / "zero123")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(ROOT / "threestudio-hash3d" / "load" / "images" / "dog1_rgba.png", images / "dog1_rgba.png")
    disc = np.zeros((64, 64, 4), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc[(yy - 32) ** 2 + (xx - 32) ** 2 < 400] = (200, 60, 40, 255)
    Image.fromarray(disc).save(images / "disc_rgba.png")
    Image.fromarray(disc[..., :3]).save(images / "photo.jpg")  # no alpha: skipped with a note
    out, gt = tmp_path / "out", tmp_path / "gt"
    args = ["--front-end", "dreamgaussian-hash3d", "--config", "configs/image_sai_hash3d.yaml", "--images", str(images),
            "--out", str(out), "--clip-model", models["clip"], "--view-size", "32",
            f"guidance.pretrained_model_name_or_path={zero123}", "iters=2", "num_pts=200", "ref_size=32",
            "render_resolutions=[24,32,32]", "mesh_resolution=24", "texture_size=32", "density_thresh=0.05"]  # fmt: skip
    assert main(args) == 0
    views = sorted((out / "image_sai_hash3d" / "dog1_rgba" / "views").iterdir())
    assert len(views) == 16 and Image.open(views[0]).size == (32, 32)
    assert (out / "image_sai_hash3d" / "dog1_rgba" / "run" / "dog1_rgba_model.ply").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["views"] == {"n_views": 16, "elevation_deg": 30.0, "size": 32}
    assert [i["item"] for i in summary["items"]] == ["disc_rgba", "dog1_rgba"]
    assert any("photo.jpg" in n for n in summary["notes"])

    # ground truth for one item: its own views (PSNR inf, SSIM 1); none for the other (a note, exit status 1)
    shutil.copytree(out / "image_sai_hash3d" / "dog1_rgba" / "views", gt / "dog1_rgba")
    before = results(out)
    capsys.readouterr()
    assert main([*args, "--gt", str(gt), "--lpips-net", "none"]) == 1
    assert results(out) == before  # scored again, not run again
    summary = json.loads((out / "summary.json").read_text())
    runs = {i["item"]: i["runs"]["image_sai_hash3d"] for i in summary["items"]}
    assert runs["dog1_rgba"]["psnr"] == "inf" and runs["dog1_rgba"]["ssim"] == pytest.approx(1.0)
    assert "psnr" not in runs["disc_rgba"] and any("disc_rgba: no ground truth" in n for n in summary["notes"])
    assert -1.0 <= runs["disc_rgba"]["clip"] <= 1.0  # image mode: views against the input image


@pytest.mark.slow
def test_gaussian_dreamer_runs_through_the_same_launcher(models, prompts, tmp_path):
    """The third front-end goes through the batch runner like the others (its configs ship with the repository)."""
    assert (ROOT / "gaussian-dreamer-hash3d" / "configs" / "gaussiandreamer-sd_hash3d.yaml").is_file()
    out = tmp_path / "out"
    args = ["--front-end", "gaussian-dreamer-hash3d", "--config", "configs/gaussiandreamer-sd_hash3d.yaml",
            "--prompts", str(prompts), "--limit", "1", "--out", str(out), "--clip-model", models["clip"],
            "system.init.kind=sphere", "system.init.sphere.num_points=200",
            f"system.guidance.pretrained_model_name_or_path={models['sd']}", "trainer.max_steps=2",
            "trainer.val_check_interval=0", "checkpoint.every_n_train_steps=2", "data.batch_size=1",
            "data.height=32", "data.width=32", "data.eval_height=32", "data.eval_width=32"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    (item,) = summary["items"]
    run = item["runs"]["gaussiandreamer-sd_hash3d"]
    assert item["label"] == "a hamburger" and run["status"] == "finished" and run["steps"] == 2
    assert -1.0 <= run["clip"] <= 1.0 and run["clip_views"] == 8


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_prompts", "prompts file not found"),
        ("empty_prompts", "holds no prompts"),
        ("unknown_front_end", "unknown front-end 'threestudio': choose from threestudio-hash3d"),
        ("missing_config", "config not found: configs/nope.yaml"),
        ("image_front_end_with_prompts", "dreamgaussian-hash3d is image-to-3D only: give --images DIR"),
        ("text_config_with_images", "dreamfusion-sd_hash3d.yaml is a text-to-3D config: give --prompts FILE"),
        ("reserved_override", "system.prompt_processor.prompt is set by the batch runner"),
        ("bad_override", "unexpected argument(s) trainer.max_steps"),
        ("jobs_on_cpu", "--jobs 2: there is no GPU here"),
        ("no_rgba_images", "no RGBA images in"),
        ("gt_with_text", "--gt holds ground-truth views of image-to-3D items"),
    ],
)
def test_bad_input_is_one_clear_error(case, message, tmp_path, prompts, capsys, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n\n")
    jpgs = tmp_path / "jpgs"
    jpgs.mkdir()
    Image.new("RGB", (8, 8)).save(jpgs / "a.jpg")
    base = ["--front-end", "threestudio-hash3d", "--config", HASHED, "--out", str(tmp_path / "out"), "--clip-model", "none"]
    args = {
        "missing_prompts": [*base, "--prompts", str(tmp_path / "nope.txt")],
        "empty_prompts": [*base, "--prompts", str(empty)],
        "unknown_front_end": ["--front-end", "threestudio", "--config", HASHED, "--prompts", str(prompts)],
        "missing_config": ["--front-end", "threestudio-hash3d", "--config", "configs/nope.yaml", "--prompts", str(prompts)],
        "image_front_end_with_prompts": ["--front-end", "dreamgaussian-hash3d", "--config", "configs/image_sai.yaml",
                                         "--prompts", str(prompts)],  # fmt: skip
        "text_config_with_images": [*base, "--images", str(ROOT / "threestudio-hash3d" / "load" / "images")],
        "reserved_override": [*base, "--prompts", str(prompts), "system.prompt_processor.prompt=a cat"],
        "bad_override": [*base, "--prompts", str(prompts), "trainer.max_steps", "3"],
        "jobs_on_cpu": [*base, "--prompts", str(prompts), "--jobs", "2", "--gpus", "cpu"],
        "no_rgba_images": [*base, "--images", str(jpgs)],
        "gt_with_text": [*base, "--prompts", str(prompts), "--gt", str(tmp_path)],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not list((tmp_path / "out").glob("*/*"))  # nothing was run


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--front-end", "threestudio-hash3d", "--config", HASHED, "--prompts", "p.txt", "--bogus"])
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ pieces
def test_ids_are_short_stable_and_distinct():
    slug, cut = slugify("A Red  Fox, asleep!")
    assert (slug, cut) == ("a_red_fox_asleep", False)
    long = "an extremely detailed " * 20
    names = ["a cat", "A cat!", long, "a dog"]
    ids = assign_ids(names)
    assert len(set(ids)) == 4 and all(len(i) <= MAX_SLUG + 9 for i in ids)
    assert ids[3] == "a_dog" and ids[0] != ids[1] and ids[0].startswith("a_cat-")
    assert assign_ids([long, "a dog"]) == [ids[2], "a_dog"]  # an id does not depend on the other items' order


def test_prompts_file_skips_comments_blanks_and_repeats(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\n  a   cat  \na dog\na cat\n")
    items, notes = read_prompts(path)
    assert [(i.id, i.target) for i in items] == [("a_cat", "a cat"), ("a_dog", "a dog")]
    assert notes == [f"1 repeated prompt(s) in {path} run once"]


@pytest.mark.parametrize("text", ["a cat: on a mat, #1", "yes", "null", "[1, 2]", "it's ${x}", "  spaced  ", "a=b"])
def test_quoted_override_values_read_back_unchanged(text):
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(OmegaConf.from_dotlist([f"k={quote(text)}"]), resolve=True)["k"] == text


def test_dry_run_writes_the_job_list_only(prompts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--front-end", "threestudio-hash3d", "--config", HASHED, "--compare-with", PLAIN, "--prompts", str(prompts),
                 "--out", str(out), "--dry-run", "--views", "4", "trainer.max_steps=3"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    jobs = read_job_list(out / "jobs.json")
    assert [j.to_dict() for j in jobs] == printed and len(jobs) == 4
    assert [j.variant for j in jobs[:2]] == ["dreamfusion-sd", "dreamfusion-sd_hash3d"]  # an item's configs together
    assert jobs[0].overrides == ("trainer.max_steps=3",) and jobs[0].views.n_views == 4
    assert jobs[0].fingerprint() == type(jobs[0]).from_json(jobs[0].to_json()).fingerprint()
    assert {p.name for p in out.iterdir()} == {"jobs.json"}


def test_slots_pin_one_gpu_each():
    assert make_slots(1, None, available=0) == [Slot(None)]
    assert make_slots(2, None, available=4) == [Slot(0), Slot(1)]
    assert make_slots(2, (3, 1), available=4) == [Slot(3), Slot(1)]
    with pytest.raises(BatchError, match="one job per GPU, and 2 GPU"):
        make_slots(3, None, available=2)
    with pytest.raises(BatchError, match="no GPU 5"):
        make_slots(1, (5,), available=2)
    assert Slot(1).env({"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"  # through the parent's list
    assert Slot(1).env({})["CUDA_VISIBLE_DEVICES"] == "1"
    assert Slot(None).env({})["CUDA_VISIBLE_DEVICES"] == ""


def test_an_item_still_run_by_a_live_worker_is_not_deleted(tmp_path):
    import socket

    from hash3d.batch.config import ViewSpec
    from hash3d.batch.jobs import JobSpec
    from hash3d.batch.state import ItemDir, write_json

    job = JobSpec("threestudio-hash3d", "v", "c.yaml", "d", True, "a_cat", "text", "a cat", (), ViewSpec(8, 0.0),
                  str(tmp_path / "v" / "a_cat"))  # fmt: skip
    item = ItemDir(job)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # hash3d.batch.worker"])
    try:
        cmdline = Path(f"/proc/{orphan.pid}/cmdline")
        while cmdline.exists() and b"hash3d" not in cmdline.read_bytes():  # until the child has exec'd
            time.sleep(0.01)
        write_json(item.root / "started.json", {"pid": orphan.pid, "host": socket.gethostname()})
        with pytest.raises(BatchError, match=f"being run by process {orphan.pid}"):
            item.begin("cpu")
        assert (item.root / "started.json").is_file()
    finally:
        orphan.kill()
        orphan.wait()
    item.begin("cpu")  # the process is gone: the folder is cleared and the job starts
    assert json.loads((item.root / "started.json").read_text())["pid"] == os.getpid()


def test_process_dispatcher_runs_one_job_per_gpu_at_a_time(tmp_path):
    """Four jobs on two GPU slots, with a stand-in worker that records its CUDA_VISIBLE_DEVICES and run time."""
    from hash3d.batch.config import ViewSpec
    from hash3d.batch.dispatch import ProcessDispatcher
    from hash3d.batch.jobs import JobSpec

    record = tmp_path / "record.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES start" >> {record}\nsleep 0.4\n'
                    f'echo "$CUDA_VISIBLE_DEVICES end" >> {record}\nexit 1\n')  # fmt: skip
    fake.chmod(0o755)
    jobs = [JobSpec("threestudio-hash3d", "v", "c.yaml", "d", True, f"item{i}", "text", f"p{i}", (), ViewSpec(8, 0.0),
                    str(tmp_path / "v" / f"item{i}")) for i in range(4)]  # fmt: skip

    class Events:
        def __init__(self):
            self.slots = []

        def started(self, job, slot):
            self.slots.append(slot.gpu)

        def ended(self, outcome):
            pass

    events = Events()
    env = os.environ.copy()
    os.environ["CUDA_VISIBLE_DEVICES"] = "5,7"  # the batch's own GPUs: workers get 5 and 7
    try:
        outcomes = ProcessDispatcher([Slot(0), Slot(1)], tmp_path / "logs", poll_s=0.02, python=str(fake)).run(jobs, events)
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert [o.status for o in outcomes] == ["killed"] * 4 and "exited with status 1" in outcomes[0].error
    assert sorted(events.slots) == [0, 0, 1, 1]
    lines = [line.split() for line in record.read_text().splitlines()]
    assert sorted(gpu for gpu, _ in lines) == ["5"] * 4 + ["7"] * 4
    for gpu in ("5", "7"):  # one job at a time per GPU
        assert [event for g, event in lines if g == gpu] == ["start", "end", "start", "end"]
    assert [event for _, event in lines[:2]] == ["start", "start"]  # the two GPUs at once

