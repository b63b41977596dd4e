"""Errors for bad user input: each one names what is wrong and how to fix it, and the launcher prints it as one line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserInputError(Exception):
    """A problem with the user's input (config, paths, images, options, checkpoints), described in words they can act on."""


class ConfigError(UserInputError, ValueError):
    """A config that cannot be loaded, merged, resolved or validated."""


class MissingFileError(UserInputError, FileNotFoundError):
    """A file or folder the user named (or hash3d ships) that does not exist."""


class RegistryError(ConfigError):
    """A registry name that is unknown, or registered twice."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like `name` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' — did you mean 'x'?' when a close candidate exists, else ''."""
    match = closest(name, candidates)
    return f" — did you mean '{match}'?" if match is not None else ""


_POINTS_ELSEWHERE = re.compile(r"[^.;]*\b(stack ?trace|traceback) above\b[^.;]*[.;]?", re.IGNORECASE)


def exception_summary(exc: BaseException) -> str:
    """'Type: first line' of an exception from a library, for a one-line error message. Sentences that send the
    reader to a stack trace (which the message replaces) are dropped, and the exception's cause is named instead."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    trimmed = _POINTS_ELSEWHERE.sub("", text).strip()
    summary = f"{type(exc).__name__}: {trimmed}" if trimmed else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if trimmed != text and cause is not None:
        summary += f" (caused by {exception_summary(cause)})"
    return summary
