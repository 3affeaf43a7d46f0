"""Errors the zoo raises for bad input. The CLI turns them into one clear message and exit code 2."""


class ZooError(Exception):
    """Base of the zoo's user-facing errors: the message names the problem and the fix."""


class ConfigError(ZooError, ValueError):
    """A configuration value is wrong: unknown name, bad argument, values that disagree."""


class DataError(ZooError, ValueError):
    """Data is missing, unreadable or inconsistent with the configuration."""
