"""`zoo groups`: a backbone's layer groups and what a fine-tuning schedule trains at each epoch."""

from __future__ import annotations

import argparse
import json

from zoo.callbacks.finetuning import STRATEGIES, FineTuning, describe_schedule


def main(argv: list[str]) -> None:
    """`zoo groups`: a backbone's layer groups, their sizes and LR multipliers, and what a fine-tuning
    schedule trains at each epoch. From a backbone name, or from a complete config (model + finetuning)."""
    from rich.console import Console
    from rich.table import Table

    from zoo.commands import split_overrides
    from zoo.run.build import build

    parser = argparse.ArgumentParser(
        prog="zoo groups",
        description=main.__doc__,
        epilog="examples:\n  zoo groups resnet18 --strategy progressive --unfreeze_every 2 --epochs 10\n"
        "  zoo groups --config configs/experiments/digits_cnn.yaml --finetuning.strategy=progressive",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("backbone", nargs="?", help="a backbone name (`zoo models`), e.g. resnet18 or timm/resnet18")
    parser.add_argument(
        "--config", help="a zoo config: its model and finetuning are used; --finetuning.* and other overrides follow it"
    )
    parser.add_argument("--input_shape", type=int, nargs="+", help="one sample's shape, e.g. 3 32 32")
    parser.add_argument("--strategy", choices=STRATEGIES, default="full")
    parser.add_argument("--unfreeze_epoch", type=int, default=1)
    parser.add_argument("--unfreeze_every", type=int, default=1)
    parser.add_argument("--milestones", type=json.loads, help='JSON, e.g. \'{"0": 0, "2": 1, "4": -1}\'')
    parser.add_argument("--backbone_lr_ratio", type=float, default=1.0)
    parser.add_argument("--layer_lr_decay", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=None, help="epochs to show (default: max_epochs or 6)")
    overrides, rest = split_overrides(argv)
    opts = parser.parse_args(rest)
    if (opts.backbone is None) == (opts.config is None):
        parser.error("give a backbone name or --config, not both")
    if overrides and not opts.config:
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (config overrides need --config)")
    epochs = opts.epochs
    if opts.config:
        task, _, trainer = build(["--config", opts.config, *overrides, "--trainer.logger=false"])
        groups = task.named_layer_groups()
        callback = next((c for c in trainer.callbacks if isinstance(c, FineTuning)), FineTuning())
        epochs = epochs or trainer.max_epochs or 6
        title = f"{opts.config}: backbone {task.backbone_name}"
    else:
        from torch import nn

        from zoo.registry import create_backbone

        kwargs = {"input_shape": tuple(opts.input_shape)} if opts.input_shape else {}
        backbone = create_backbone(opts.backbone, pretrained=False, **kwargs)
        groups = {f"backbone.{name}": module for name, module in backbone.layer_groups().items()}
        groups["head"] = nn.Identity()  # the task builds the head; shown for its LR and schedule
        milestones = {int(k): int(v) for k, v in (opts.milestones or {}).items()}
        callback = FineTuning(
            opts.strategy,
            opts.unfreeze_epoch,
            opts.unfreeze_every,
            milestones,
            opts.backbone_lr_ratio,
            opts.layer_lr_decay,
        )
        epochs = epochs or 6
        title = f"{opts.backbone}: strategy {opts.strategy}"
    table = Table(
        title=title,
        caption="+ trains, . frozen (one mark per epoch, in fives); LR x multiplies the optimizer's LR (head = 1)",
    )
    for column in ("group", "params", "LR x"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=True)
    table.add_column(f"epochs 0-{epochs - 1}", no_wrap=True)
    for name, params, multiplier, trains in describe_schedule(callback, groups, epochs):
        size = "new" if name == "head" and opts.backbone else f"{params:,}"
        marks = "".join("+" if t else "." for t in trains)
        table.add_row(name, size, f"{multiplier:.3g}", " ".join(marks[i : i + 5] for i in range(0, len(marks), 5)))
    Console().print(table)
    print(f"strategy {callback.strategy}")
