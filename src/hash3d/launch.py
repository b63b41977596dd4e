"""The threestudio-style launcher shared by every front-end (`threestudio-hash3d/launch.py`,
`gaussian-dreamer-hash3d/launch.py` call `main()`).

    python launch.py --config configs/X.yaml --train [--gpu 0] [key.sub=value ...]
    python launch.py --config outputs/<name>/<trial>/configs/parsed.yaml --train resume=outputs/<name>/<trial>/ckpts/last.ckpt
    python launch.py --config outputs/<name>/<trial>/configs/parsed.yaml --test  resume=outputs/<name>/<trial>/ckpts/last.ckpt

Every check that can fail on the user's input (config file and keys, --gpu, the resume checkpoint and whether it
matches the config, the data files, the models) runs before the trial folder is created, so a bad command leaves
no half-written output behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch

from .cli import run_cli, setup_logging
from .config import ConfigError, ExperimentConfig, UserInputError, build, explain_config, load_config_report, to_yaml
from .config.loader import config_file
from .training.checkpoint import check_config, load_checkpoint
from .training.loop import Trainer, resolve_precision, seed_everything
from .training.outputs import TrialDir

log = logging.getLogger("hash3d")


MODES = ("train", "validate", "test", "export")


class LaunchError(UserInputError, ValueError):
    """A bad command-line argument."""


def build_parser(prog: str = "launch.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Hash3D: score-distillation 3D generation with a pose/timestep hash cache (threestudio-style).",
        epilog="Any further key.sub=value arguments override the config (OmegaConf dotlist), e.g. "
        "data.image_path=./load/images/dog1_rgba.png trainer.max_steps=300 resume=PATH.",
    )
    p.add_argument("--config", required=True, help="YAML config (may extend others with `extends:`)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="train, then render the test orbit")
    mode.add_argument("--validate", action="store_true", help="render the validation views of resume=CKPT")
    mode.add_argument("--test", action="store_true", help="render the test orbit (frames + mp4) of resume=CKPT")
    mode.add_argument("--export", action="store_true", help="export the result of resume=CKPT (mesh, .ply, …)")
    p.add_argument(
        "--gpu",
        default=None,
        help="GPU index (default 0; comma list accepted; one GPU is used). 'cpu' forces the CPU. On a machine "
        "without a GPU the run falls back to the CPU with a note.",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print how each key of the config (threestudio, original Hash3D and GaussianDreamer files included) is "
        "read here: as is, mapped, upstream default, accepted with no effect, or refused; then exit",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def parse_args(argv: Sequence[str], prog: str = "launch.py") -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser(prog)
    args, extras = parser.parse_known_args(list(argv))
    flags = [e for e in extras if e.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    if not args.explain and not any(getattr(args, m) for m in MODES):
        parser.error("one of the arguments --train --validate --test --export (or --explain) is required")
    bad = [e for e in extras if "=" not in e]
    if bad:
        parser.error(f"overrides must be key.sub=value; got {' '.join(bad)}")
    return args, extras


def select_device(gpu: str | None) -> tuple[torch.device, str | None]:
    """--gpu (None: not given, GPU 0 where there is one) -> the device to use and an optional one-line note (CPU
    fallback, extra indices ignored)."""
    if gpu is None:
        if not torch.cuda.is_available():
            return torch.device("cpu"), "no CUDA GPU on this machine: running on the CPU"
        gpu = "0"
    text = gpu.strip().lower()
    if text == "cpu":
        return torch.device("cpu"), None
    try:
        indices = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LaunchError(f"--gpu must be GPU indices such as 0 or 0,1 (or 'cpu'); got {gpu!r}") from None
    if not indices or any(i < 0 for i in indices):
        raise LaunchError(f"--gpu must be non-negative GPU indices such as 0 or 0,1 (or 'cpu'); got {gpu!r}")
    if not torch.cuda.is_available():
        return torch.device("cpu"), f"no CUDA GPU on this machine: running on the CPU (--gpu {gpu} ignored)"
    count = torch.cuda.device_count()
    missing = [i for i in indices if i >= count]
    if missing:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        extra = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise LaunchError(
            f"--gpu {gpu}: no GPU with index {', '.join(map(str, missing))}; this machine has {count} visible "
            f"GPU{'s' if count != 1 else ''}{extra}, indices 0..{count - 1}"
        )
    note = None
    if len(indices) > 1:
        note = f"multi-GPU training is not supported: using GPU {indices[0]} only"
    torch.cuda.set_device(indices[0])
    return torch.device("cuda", indices[0]), note


def fill_trial_names(cfg: ExperimentConfig) -> None:
    """timestamp (kept when the config already has one, e.g. a parsed.yaml), exp_dir, trial_name, trial_dir."""
    if cfg.use_timestamp and not cfg.timestamp:
        cfg.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
    stamp = cfg.timestamp if cfg.use_timestamp else ""
    cfg.trial_name = (cfg.tag + stamp).replace(os.sep, "_") or "default"
    cfg.exp_dir = os.path.join(cfg.exp_root_dir, cfg.name)
    cfg.trial_dir = os.path.join(cfg.exp_dir, cfg.trial_name)


def run(argv: Sequence[str] | None = None, prog: str = "launch.py") -> Path:
    """Parse, check everything, then train / validate / test / export. Returns the trial folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv, prog)
    setup_logging(args.verbose)
    config_path = config_file(args.config)
    if args.explain:
        text, ok = explain_config(config_path, overrides)
        print(text)
        if not ok:
            raise ConfigError(f"{config_path} does not load as it is (see above)")
        return config_path
    mode = next(m for m in MODES if getattr(args, m))

    # 1. everything that can be wrong with the input, before any output exists
    cfg, _, report = load_config_report(config_path, overrides)
    if report.no_effect_line():
        log.info("%s", report.no_effect_line())
    if not cfg.system_type:
        raise ConfigError("system_type is empty: name the system to run (e.g. system_type: zero123-system)")
    if not cfg.data_type:
        raise ConfigError("data_type is empty: name the data module (e.g. data_type: single-image-datamodule)")
    device, note = select_device(args.gpu)
    if note:
        log.info("note: %s", note)
    precision, note = resolve_precision(cfg.trainer.precision, device)
    if note:
        log.info("note: %s", note)
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        if cfg.checkpoint.check_config:
            check_config(ckpt, cfg.resume, cfg, "train" if mode == "train" else "eval")
    elif mode != "train":
        log.warning("no resume=CKPT given: --%s uses an untrained model", mode)
    fill_trial_names(cfg)
    seed_everything(cfg.seed)
    datamodule = build("data", cfg.data_type, cfg.data, seed=cfg.seed)
    datamodule.setup()
    system = build("system", cfg.system_type, cfg.system, device=device)
    trial = TrialDir(Path(cfg.trial_dir))
    trainer = Trainer(cfg, trial, device, precision)
    if ckpt is not None:
        trainer.restore(system, ckpt, cfg.resume or "", full=False)  # the weights must fit before anything is written

    # 2. the trial folder
    resuming_here = (trial.configs / "parsed.yaml").is_file()
    with trial.removed_on_failure():  # a folder this run made goes again if it fails before any result
        raw = config_path.read_text()
        trial.write_configs(to_yaml(cfg), None if resuming_here and (trial.configs / "raw.yaml").is_file() else raw)
        trial.write_cmd([Path(sys.executable).name, prog, *argv], vars(args))
        log.info("trial folder: %s", trial.root)

        # 3. the run
        if mode == "train":
            trainer.fit(system, datamodule, ckpt, cfg.resume)
            if trainer.interrupted:  # no test render: stop now (exit status 130), saying how to go on
                log.warning(
                    "interrupted at step %d; saved %s. Resume with:\n  python %s --config %s --train resume=%s",
                    trainer.global_step, trial.last_ckpt, prog, trial.configs / "parsed.yaml", trial.last_ckpt,
                )
                raise KeyboardInterrupt
            if cfg.trainer.test_after_fit:
                trainer.test(system, datamodule)
        else:
            trainer.place(system)
            if mode == "validate":
                trainer.validate(system, datamodule)
            elif mode == "test":
                trainer.test(system, datamodule)
            else:
                trainer.export(system)
    log.info("done: %s", trial.root)
    return trial.root


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 a bug, 2 bad input, 130 interrupted; `hash3d.cli.run_cli`)."""
    prog = prog or (os.path.basename(sys.argv[0]) if argv is None else "") or "launch.py"
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)

    def body() -> None:
        run(argv, prog)

    return run_cli(body, prog, verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
