"""The one error path and logging set-up of every hash3d command line (the launchers, DreamGaussian's main.py /
main2.py / process.py, `python -m hash3d.batch`, eval_clip_sim.py / eval_nvs.py, `python -m hash3d.demo`).

`run_cli(body, prog)` runs a command's body and turns its outcome into an exit status:

- returns normally: its int (None counts as 0);
- raises a `UserInputError` (bad config, missing file, wrong image, impossible value): one line
  ``prog: error: <message>`` on stderr, exit status 2 (with `verbose`, the traceback first);
- Ctrl-C: one line ``prog: interrupted…``, exit status 130;
- the GPU runs out of memory (`torch.OutOfMemoryError`): neither bad input nor a bug but a run too large for the
  device, so one line that says what to lower, exit status 1 (with `verbose`, the traceback first);
- raises anything else: that is a bug, so the traceback is printed in full and the exit status is 1.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from .config.errors import UserInputError

__all__ = ["OUT_OF_MEMORY", "run_cli", "setup_logging"]

OUT_OF_MEMORY = (
    "the GPU ran out of memory ({details}). One training step holds the renders of its camera batch, the "
    "samples along their rays and the diffusion model's activations: lower the render size or the batch "
    "(data.random_camera.height / width / batch_size, data.height / width; DreamGaussian: ref_size, batch_size), the "
    "samples per ray (system.renderer.num_samples_per_ray), or run on a GPU with more memory. Nothing was saved for "
    "the step that failed; checkpoints written before it are intact."
)
"""The one line for a CUDA out-of-memory error; {details}: what torch said it tried to allocate and had free."""


def _memory_details(message: str) -> str:
    sentences = [part.strip().rstrip(".") for part in message.split(". ")]
    picked = [p for p in sentences if p.startswith(("Tried to allocate", "GPU "))]
    return "; ".join(picked) if picked else sentences[0]


def _out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # an error of torch's can only come from a process that imported it
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message (not the stream of the first command in this
    process, which an embedding program or a test harness may have replaced and closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with `verbose`) messages of every `hash3d.*` logger to stderr as ``[LEVEL] message``; calling
    it again only changes the level."""
    logger = logging.getLogger("hash3d")
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(
    body: Callable[[], int | None], prog: str, *, verbose: bool = False, interrupted: str = "interrupted"
) -> int:
    """Run a command's body; see the module docstring for the exit statuses. `interrupted` is the line printed
    after Ctrl-C (say what was kept and how to go on)."""
    try:
        status = body()
    except UserInputError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - not the user's input: a bug, shown in full
        if _out_of_memory(exc):
            if verbose:
                traceback.print_exc()
            print(f"{prog}: error: {OUT_OF_MEMORY.format(details=_memory_details(str(exc)))}", file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"{prog}: internal error (the traceback above is a bug in hash3d, not a problem with the input)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0 if status is None else int(status)
