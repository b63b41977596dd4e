"""The batch runner's error for bad input; `python -m hash3d.batch` prints it as one line and exits with status 2."""

from __future__ import annotations

from hash3d.config.errors import UserInputError


class BatchError(UserInputError, ValueError):
    """A problem with the batch's input (paths, prompts, images, front-end, configs, options, output folder)."""
