"""A zoo config, parsed and built: the way every command, benchmark and notebook gets its run.

    parser, config = parse(["--config", "configs/experiments/digits_cnn.yaml", "--trainer.max_epochs=2"])
    task, datamodule, trainer = build(["--config", "configs/experiments/digits_cnn.yaml"])
    trainer.fit(task, datamodule=datamodule)

Both go through :class:`zoo.lightning_cli.ZooCLI` without a subcommand, so a config is read, checked and
completed exactly as `zoo fit` reads it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from zoo.lightning_cli import ZooCLI


@contextlib.contextmanager
def quiet_cli() -> Iterator[None]:
    """Without two warnings that every built run would repeat and that mean nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # `zoo tune ...` is in sys.argv
        warnings.filterwarnings("ignore", message="Experiment logs directory")  # trial.yaml is written there first
        yield


def parse(argv: list[str]) -> tuple[Any, Any]:
    """The parser and the resolved config of ``argv`` (``--config FILE`` and overrides): defaults filled in,
    overrides applied, the checkpoint's model settings read, nothing instantiated (a pretrained backbone's
    preprocessing is not followed yet: :func:`build` does it)."""
    with quiet_cli():
        cli = ZooCLI(args=argv, run=False, instantiate=False)
    return cli.parser, cli.config


def build(argv: list[str]) -> tuple[Any, Any, Any]:
    """The task, the datamodule and the trainer of ``argv``, as `zoo fit` builds them: data facts linked into
    the model, every preflight check passed (:mod:`zoo.run.preflight`), the default callbacks added. A bad
    config exits with the command-line error `zoo fit` would print (SystemExit, code 2)."""
    cli = ZooCLI(args=argv, run=False)
    return cli.model, cli.datamodule, cli.trainer


def dump_with(parser: Any, config: Any, values: dict[str, Any]) -> str:
    """``config`` (from :func:`parse`) with ``values`` set at their dotted keys, as YAML that `zoo fit --config`
    accepts; a key inside a dict value (``model.init_args.backbone_kwargs.depth``) is set inside it."""
    config = config.clone()
    for key, value in values.items():
        if key in config:
            config[key] = value
            continue
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest prefix that holds a dict
            head = ".".join(parts[:cut])
            if head in config and isinstance(config[head], dict):
                target = config[head]
                for part in parts[cut:-1]:
                    target = target[part]
                target[parts[-1]] = value
                break
    return parser.dump(config, skip_none=False)
