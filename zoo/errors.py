"""Errors the zoo raises. The CLI turns them into one clear message: exit code 2 for bad input, 1 for a run
that had to stop."""

from __future__ import annotations

from typing import Optional


class ZooError(Exception):
    """Base of the zoo's user-facing errors: the message names the problem and the fix."""


class ConfigError(ZooError, ValueError):
    """A configuration value is wrong: unknown name, bad argument, values that disagree."""


class DataError(ZooError, ValueError):
    """Data is missing, unreadable or inconsistent with the configuration."""


class TrainingError(ZooError, RuntimeError):
    """Training had to stop (a non-finite loss): the message names the step and what to try."""


def zoo_error_in(exc: BaseException) -> Optional[ZooError]:
    """The first ZooError in an exception's chain of causes, if any (jsonargparse and Lightning wrap them)."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ZooError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
