"""The `zoo` command: LightningCLI for fit / validate / test / predict, plus the zoo's own commands.

`zoo` (the console script) and `python cli.py` are the same program. This file imports only the standard
library at the top: `zoo --help` answers without loading torch or Lightning, and each command imports what it
uses (ZooCLI lives in :mod:`zoo.lightning_cli` over the functions of :mod:`zoo.run`, the other commands in
:mod:`zoo.commands`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from zoo.commands import COMMAND_MODULES, DESCRIPTION, EXTRA_COMMANDS

LIGHTNING_COMMANDS = {
    "fit": "train a model (and test its best checkpoint): zoo fit --config CONFIG",
    "validate": "one evaluation pass over the validation set: zoo validate --config CONFIG --ckpt_path X",
    "test": "one evaluation pass over the test set: zoo test --config CONFIG --ckpt_path X",
    "predict": "predictions for new files, from a checkpoint alone: zoo predict --ckpt_path X INPUT",
}

# Printed by Lightning on every run and saying nothing about it: an advertisement for its cloud logger (logged
# at INFO level), and a FutureWarning from its own CombinedLoader, which builds torch's deprecated LeafSpec.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"

# The names tests and scripts import from here, and the modules that hold them; imported on first use (they
# need Lightning).
_LAZY = {
    "ZooCLI": "zoo.lightning_cli",
    "follow_backbone_preprocessing": "zoo.run.preflight",
    "resolve_last_checkpoint": "zoo.resume",
    "run_folder": "zoo.run.files",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cli' has no attribute {name!r}")


def print_help(file: Optional[TextIO] = None) -> None:
    """The top-level help, without importing Lightning (`zoo COMMAND --help` shows a command's options)."""
    file = file or sys.stdout
    commands = ",".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
    width = max(map(len, [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])) + 2
    print(f"usage: zoo [-h] [--version] {{{commands}}} ...\n", file=file)
    print(f"{DESCRIPTION.split(chr(10) + chr(10) + 'Zoo commands')[0]}\n", file=file)
    print("Lightning commands (zoo COMMAND --help lists every option, -c/--config reads YAML):", file=file)
    for name, text in LIGHTNING_COMMANDS.items():
        print(f"  {name:{width}s}{text}", file=file)
    print("\nZoo commands:", file=file)
    for name, text in EXTRA_COMMANDS.items():
        print(f"  {name:{width}s}{text}", file=file)
    print("\nzoo --version prints the versions of the zoo, torch and Lightning.", file=file)


def versions() -> str:
    """`zoo --version`: the zoo's version and those of torch and Lightning, read from the installed packages'
    metadata (importing torch would take seconds)."""
    from importlib import metadata

    def installed(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    zoo_version = installed("zoo") or _source_version() or "unknown"
    return "\n".join(
        [f"zoo {zoo_version}", *(f"{name} {installed(name) or 'not installed'}" for name in ("torch", "lightning"))]
    )


def _source_version() -> Optional[str]:
    """The version in pyproject.toml beside this file, for a source tree that is not installed."""
    try:
        text = Path(__file__).with_name("pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else None


def _list_models(argv: list[str]) -> None:
    """`zoo models [PATTERN]` (:mod:`zoo.commands.models`); a pattern that matches nothing exits with code 2."""
    from zoo.commands.models import main as models
    from zoo.errors import ZooError

    try:
        models(argv)
    except ZooError as err:
        sys.stderr.write(f"zoo: error: {err}\n")
        sys.exit(2)


def _quiet_lightning() -> None:
    """Without the two messages Lightning prints on every run (LITLOGGER_TIP, LEAFSPEC_WARNING), matched exactly,
    so that every other message still shows."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_the_litlogger_tip)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)


def _not_the_litlogger_tip(record: Any) -> bool:
    return not record.getMessage().startswith(LITLOGGER_TIP)


def _show_zoo_logs() -> None:
    """The zoo's own INFO messages (weights loaded, heads re-initialised, ...) on stderr, once."""
    import logging

    class CurrentStderr(logging.StreamHandler):  # the stderr of now, not of the first call (tests, notebooks)
        stream = property(lambda self: sys.stderr, lambda self, value: None)

    zoo_logger = logging.getLogger("zoo")
    if not zoo_logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("zoo: %(message)s"))
        zoo_logger.addHandler(handler)
        zoo_logger.setLevel(logging.INFO)
        zoo_logger.propagate = False


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the `zoo` console script and of `python cli.py`."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv in (["-h"], ["--help"]):
        print_help()
        return
    if argv == ["--version"]:
        print(versions())
        return
    if not argv:  # as argparse does without its required argument: usage and an error, exit code 2
        print_help(sys.stderr)
        sys.stderr.write("\nzoo: error: no command given; choose one above, e.g. zoo fit --config CONFIG\n")
        sys.exit(2)
    if argv[0] == "models":  # before Lightning: listing the registered backbones imports neither it nor torch
        _list_models(argv[1:])
        return
    _show_zoo_logs()
    _quiet_lightning()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from zoo.errors import TrainingError, zoo_error_in
    from zoo.lightning_cli import ZooCLI
    from zoo.run.distributed import end_distributed, peer_died

    try:
        if argv and argv[0] in COMMAND_MODULES:
            import importlib

            importlib.import_module(COMMAND_MODULES[argv[0]]).main(argv[1:])
            return
        if argv and argv[0] == "predict" and "--config" not in argv and "-c" not in argv:
            from zoo.commands.predict import main as predict_files  # new data -> CSV, from the checkpoint alone

            predict_files(argv[1:])
            return
        ZooCLI(args=args)
        end_distributed()
    except SIGTERMException:
        # Lightning exits 0 on SIGTERM (#19916); a scheduler must see the job did not finish.
        sys.stderr.write("zoo: stopped by SIGTERM; last.ckpt holds the latest step, resume with --ckpt_path last\n")
        sys.exit(143)
    except Exception as exc:
        err = zoo_error_in(exc)
        if err is None and peer_died(exc):
            sys.stderr.write(
                f"zoo: error: another training process stopped ({' '.join(str(exc).split())[:200]}); this one "
                "stops too. Its log says why; resume with --ckpt_path last\n"
            )
            sys.exit(1)
        if err is None:
            raise
        sys.stderr.write(f"zoo: error: {err}\n")
        sys.exit(1 if isinstance(err, TrainingError) else 2)


if __name__ == "__main__":
    main()
