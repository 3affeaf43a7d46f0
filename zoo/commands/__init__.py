"""The zoo's commands beside fit / validate / test / predict: each module has ``main(argv)``, imported only
when its command runs, so `zoo --help` stays quick."""

from __future__ import annotations

import argparse
import difflib


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A command's own options, and the config overrides it passes on (dotted ``--trainer.max_epochs=5`` and
    the config's top-level flags such as ``--seed_everything=1``, which the config's parser checks).

    A flag that looks like a misspelt option of the command is refused here, with the option it resembles.
    """
    from cli import _split_overrides

    overrides, rest = _split_overrides(argv)
    opts, unknown = parser.parse_known_args(rest)
    ours = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for token in unknown:
        close = difflib.get_close_matches(token.split("=", 1)[0], ours, n=1, cutoff=0.75)
        if token.startswith("--") and close:
            parser.error(f"unrecognized argument {token}; did you mean {close[0]}?")
    return opts, [*unknown, *overrides]
