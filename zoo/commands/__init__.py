"""The zoo's commands beside fit / validate / test / predict: each module has ``main(argv)``, imported only
when its command runs, so `zoo --help` stays quick."""

from __future__ import annotations

import argparse

from zoo.errors import CLOSE_DOTTED, did_you_mean

EXTRA_COMMANDS = {
    "models": "list backbones: zoo models [PATTERN], e.g. 'res*', 'timm/*convnext*'",
    "groups": "a backbone's layer groups and a fine-tuning schedule: zoo groups resnet18 --strategy progressive",
    "tune": "hyperparameter search with Optuna: zoo tune --config CONFIG --search SPACE.yaml",
    "export": "ONNX, torch.export, safetensors and a model card: zoo export --ckpt_path X",
    "report": "a run's pictures as PNG (curves, confusion, top losses...), or runs compared: zoo report RUN_DIR...",
    "diagnose": "what went wrong in a run, with the evidence and remedies: zoo diagnose RUN_DIR",
    "lr-find": "learning-rate range test, plot and a config with the suggested LR: zoo lr-find --config CONFIG",
    "benchmark": "one recipe over data sets x seeds, a table beside baselines and published results: zoo benchmark",
}
# Commands implemented in zoo/commands/<name>.py, each a main(argv) imported only when used.
COMMAND_MODULES = {
    "groups": "zoo.commands.groups",
    "tune": "zoo.commands.tune",
    "export": "zoo.commands.export",
    "report": "zoo.commands.report",
    "diagnose": "zoo.commands.diagnose",
    "lr-find": "zoo.commands.lr_find",
    "benchmark": "zoo.commands.benchmark",
}

DESCRIPTION = """Train, evaluate and use the zoo's models from YAML configs.

  zoo fit --config configs/experiments/digits_cnn.yaml
  zoo fit --data configs/data/digits.yaml --model configs/model/cnn.yaml --trainer.max_epochs 5
  zoo test --config configs/experiments/digits_cnn.yaml --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt
  zoo predict --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt examples/digits --output predictions.csv

Zoo commands beside fit / validate / test / predict:
""" + "\n".join(f"  {name:9s} {help}" for name, help in EXTRA_COMMANDS.items())


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A command's own options, and the config overrides it passes on (dotted ``--trainer.max_epochs=5`` and
    the config's top-level flags such as ``--seed_everything=1``, which the config's parser checks).

    A flag that looks like a misspelt option of the command is refused here, with the option it resembles.
    """
    from zoo.compat import option_strings  # imports torch: `zoo --help` must not

    overrides, rest = split_overrides(argv)
    opts, unknown = parser.parse_known_args(rest)
    ours = [o for o in option_strings(parser) if o.startswith("--")]
    for token in unknown:
        hint = did_you_mean(
            token.split("=", 1)[0], ours, n=1, cutoff=CLOSE_DOTTED, quote=False, form="; did you mean {}?"
        )
        if token.startswith("--") and hint:
            parser.error(f"unrecognized argument {token}{hint}")
    return opts, [*unknown, *overrides]


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Dotted config overrides (``--finetuning.strategy=x`` or ``--trainer.max_epochs 5``) and the rest."""
    overrides, rest = [], []
    tokens = iter(argv)
    for token in tokens:
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            overrides.append(token)
            if "=" not in token:
                overrides.append(next(tokens, ""))
        else:
            rest.append(token)
    return overrides, rest
