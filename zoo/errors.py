"""Errors the zoo raises. The CLI turns them into one clear message: exit code 2 for bad input, 1 for a run
that had to stop."""


class ZooError(Exception):
    """Base of the zoo's user-facing errors: the message names the problem and the fix."""


class ConfigError(ZooError, ValueError):
    """A configuration value is wrong: unknown name, bad argument, values that disagree."""


class DataError(ZooError, ValueError):
    """Data is missing, unreadable or inconsistent with the configuration."""


class TrainingError(ZooError, RuntimeError):
    """Training had to stop (a non-finite loss): the message names the step and what to try."""
