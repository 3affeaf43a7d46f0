"""`zoo predict --ckpt_path CKPT INPUT`: a trained model's predictions on new files, as a CSV.

INPUT is what the checkpoint's data reads: an image file or a folder of images (Digits, MNIST,
Fashion-MNIST, CIFAR, ImageFolder), a CSV / TSV / JSON-lines file of texts (TextClassification), or a
``.ts`` file (TimeSeries). The checkpoint alone is enough: it carries the model's hyperparameters, the
resolved config (which datamodule, how it prepared inputs) and the data's state (class names,
normalisation statistics, vocabulary). With ``--config``, `zoo predict` is Lightning's own command.
"""

from __future__ import annotations

import argparse
import csv
import os
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from zoo.checkpoints import class_names, load_datamodule, load_task, read_checkpoint
from zoo.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  zoo predict --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt examples/digits "
        "--output predictions.csv",
    )
    parser.add_argument("input", help="an image file or folder, a text CSV / TSV / JSONL file, or a .ts file")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `zoo fit`")
    parser.add_argument("--output", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--backbone",
        metavar="CLASS_PATH",
        help="for a model of your own network: its class path (mypkg.nets.MyNet), which must be the checkpoint's; "
        "a checkpoint never imports a module you did not name",
    )
    return parser


def predict(task: Any, datamodule: Any, input_path: str, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """The task's predictions (class probabilities, or values in the targets' units) for every input."""
    dataset, names = datamodule.predict_inputs(input_path)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=datamodule.collate_fn())
    outputs = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            outputs.append(task.predict_step(batch, i))
    return torch.cat(outputs), names


def write_csv(
    path: str, names: list[str], outputs: torch.Tensor, classes: Optional[list[str]], regression: bool
) -> None:
    """One row per input: the prediction, then each class's probability (or each target's value)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if regression:
            writer.writerow(["input", *(f"value_{i}" for i in range(outputs.shape[1]))])
            writer.writerows([name, *(f"{v:.6g}" for v in row.tolist())] for name, row in zip(names, outputs))
            return
        labels = classes or [str(i) for i in range(outputs.shape[1])]
        writer.writerow(["input", "predicted", "probability", *(f"p_{c}" for c in labels)])
        best = outputs.argmax(1)
        for name, row, k in zip(names, outputs, best.tolist()):
            writer.writerow([name, labels[k], f"{row[k]:.6f}", *(f"{p:.6f}" for p in row.tolist())])


def main(argv: list[str]) -> None:
    """Entry point of `zoo predict` without ``--config``."""
    from zoo.tasks import Autoencoder, Regressor

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size={args.batch_size} must be at least 1")
    ckpt = read_checkpoint(args.ckpt_path, trusted=[args.backbone] if args.backbone else ())
    task = load_task(args.ckpt_path, ckpt)
    if isinstance(task, Autoencoder):
        raise ConfigError(
            f"{args.ckpt_path} is an autoencoder: its outputs are reconstructions, not predictions; "
            "use its encoder as a backbone (model.backbone: zoo/<checkpoint>)"
        )
    datamodule = load_datamodule(
        ckpt, args.ckpt_path, instead="predict with `zoo predict --config CONFIG --ckpt_path ...` instead"
    )
    outputs, names = predict(task, datamodule, args.input, args.batch_size)
    regression = isinstance(task, Regressor)
    write_csv(args.output, names, outputs, class_names(ckpt), regression)
    what = "values" if regression else "class probabilities"
    print(f"{len(names)} predictions ({what}) written to {args.output}")
