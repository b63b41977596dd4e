"""The error the evaluation tools raise for bad input (a `UserInputError`: their command lines print it as one line
and exit with status 2 through `hash3d.cli.run_cli`)."""

from __future__ import annotations

from typing import Sequence

from hash3d.config.errors import UserInputError


class EvalError(UserInputError, ValueError):
    """A problem with the user's input (paths, images, options, models) described in words they can act on."""


def list_names(names: Sequence[str], limit: int = 20) -> str:
    """'a, b, c' for short lists; the first `limit` names and '… and N more' for long ones."""
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", … and {len(names) - limit} more"
    return shown
