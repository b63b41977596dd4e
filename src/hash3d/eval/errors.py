"""The one error type the evaluation tools raise for bad input, and how the command lines report it."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class EvalError(Exception):
    """A problem with the user's input (paths, images, options, models) described in words they can act on."""


def list_names(names: Sequence[str], limit: int = 20) -> str:
    """'a, b, c' for short lists; the first `limit` names and '… and N more' for long ones."""
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", … and {len(names) - limit} more"
    return shown


def run_cli(main: Callable[[], int], prog: str) -> int:
    """Run a command-line entry point; an EvalError becomes one 'prog: error: …' line on stderr and exit status 2."""
    try:
        return main()
    except EvalError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
