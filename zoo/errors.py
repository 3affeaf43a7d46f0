"""Errors the zoo raises. The CLI turns them into one clear message: exit code 2 for bad input, 1 for a run
that had to stop."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Optional

# How close a mistyped word must be to a choice to be suggested (difflib's ratio): a name, and a command-line
# option or dotted config key, whose long shared prefixes (``--trainer.``, ``model.init_args.``) make every
# choice look close at the default.
CLOSE = 0.6
CLOSE_DOTTED = 0.8


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


def did_you_mean(
    word: str,
    choices: Iterable[str],
    *,
    n: int = 3,
    cutoff: float = CLOSE,
    quote: bool = True,
    form: str = " Did you mean {}?",
) -> str:
    """The hint an error message ends with when a name is mistyped: `` Did you mean 'x' or 'y'?``, the (up to
    ``n``) choices closest to ``word``, best first; "" when none is close.

    Args:
        quote: show the choices as Python strings (names); False shows them as typed (``--max_epochs``).
        form: the hint's sentence around the choices, for messages of another shape (``"; did you mean {}?"``).
    """
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return form.format(" or ".join(repr(c) if quote else c for c in close)) if close else ""
