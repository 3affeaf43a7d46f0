"""How the zoo's CLI reads arguments and reports a bad one: one short message with the close matches of a
mistyped key, exit code 2, and help text that keeps its examples' lines."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import inspect
import re
import sys
from typing import Any, Iterator, NoReturn, Optional

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from zoo.callbacks.feature_cache import FeatureCache
from zoo.callbacks.finetuning import FineTuning
from zoo.compat import option_string_actions
from zoo.errors import CLOSE_DOTTED, did_you_mean
from zoo.tasks.base import init_arguments

HELP_HINT = "Run with --help to see the accepted keys."
# True while a parser reads the command line and config files (a subcommand's parser reports its errors inside
# the root parser's call): those errors are about keys and values, which --help lists. Errors reported after
# parsing (a data file, an unknown backbone) come with their own fix.
_parsing = contextvars.ContextVar("zoo_parsing", default=False)


class ZooArgumentParser(LightningArgumentParser):
    """The CLI's parser: errors are one short message with close matches, not the whole usage text."""

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:
        with _reading_arguments():
            return super().parse_args(*args, **kwargs)

    def parse_object(self, *args: Any, **kwargs: Any) -> Any:
        with _reading_arguments():
            return super().parse_object(*args, **kwargs)

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's inner parsers raise, and their callers try alternatives
            super().error(message, ex)
        hint = _close_match_hint(message) or self._unrecognized_hint(message)
        suffix = f"\n{HELP_HINT}" if _parsing.get() else ""
        sys.stderr.write(f"zoo: error: {message.strip()}{hint}{suffix}\n")
        sys.exit(2)

    def _unrecognized_hint(self, message: str) -> str:
        """'Did you mean ...' for a mistyped command-line option (``--trainer.max_epohcs``), among this parser's."""
        found = re.search(r"unrecognized arguments: (--[\w.]+)", message)
        if not found:
            return ""
        options = sorted(option_string_actions(self))
        return did_you_mean(found.group(1), options, cutoff=CLOSE_DOTTED, quote=False, form="\n  Did you mean {}?")


@contextlib.contextmanager
def _reading_arguments() -> Iterator[None]:
    token = _parsing.set(True)
    try:
        yield
    finally:
        _parsing.reset(token)


def _close_match_hint(message: str) -> str:
    """'Did you mean ...' for jsonargparse's unknown-key messages, from the keys that place accepts."""
    found = re.search(r"(?:Group '([\w.]+)' does not accept option|[Oo]ption) '([\w.]+)'", message)
    if not found:
        return ""
    group, key = found.group(1) or "", found.group(2)
    if "." in key:
        group, key = key.rsplit(".", 1)
    candidates: set[str] = set()
    for cls_path in re.findall(r"class_path '([\w.]+)'", message):
        candidates |= _init_params(cls_path)
    known = {
        "trainer": Trainer,
        "checkpoint": ModelCheckpoint,
        "early_stopping": EarlyStopping,
        "finetuning": FineTuning,
        "feature_cache": FeatureCache,
    }
    if group.split(".")[-1] in known:
        candidates |= _params_of(known[group.split(".")[-1]])
    return did_you_mean(key, sorted(candidates), form="\n  Did you mean {}?")


def _params_of(obj: Any) -> set[str]:
    if isinstance(obj, type):
        return set(init_arguments(obj))  # with a parent's, where a task passes them on in **kwargs
    try:
        return set(inspect.signature(obj).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


def _init_params(class_path: str) -> set[str]:
    module, _, name = class_path.rpartition(".")
    try:
        return _params_of(getattr(__import__(module, fromlist=[name]), name))
    except (ImportError, AttributeError):
        return set()


class RawHelp(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the description's examples on their own lines."""
