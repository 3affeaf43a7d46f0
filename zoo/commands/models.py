"""`zoo models [PATTERN]`: the backbones as a table of name, family, parameters, input kind and description.

The registered backbones are listed from :data:`REGISTERED`, a static copy of what the registry says about each,
so the command answers without importing torch and building every backbone to count its parameters (~5 s of
CPU before, well under 1 s now). tests/test_models_command.py keeps the copy equal to the registry and prints the new
table when it is not. A pattern with a ``/`` (``timm/*convnext*``, ``zoo/runs/**/*.ckpt``) asks the registry,
which imports the source's library.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from typing import NamedTuple

from zoo.errors import ConfigError

USAGE = "usage: zoo models [PATTERN]"
FOOTNOTE = "Parameter counts are for each backbone's default input shape; the head is not included."


class Listed(NamedTuple):
    """One row of the table: what the registry knows about a backbone, its description cut to the first clause."""

    family: str
    params: int
    input_kind: str
    description: str


# Generated from the registry by registered_rows(); tests/test_models_command.py fails, printing the new table, when
# a backbone is registered, renamed or changed without this table.
REGISTERED: dict[str, Listed] = {
    "cnn": Listed("cnn", 420_448, "image", "Classic CNN"),
    "fcn1d": Listed("conv1d", 266_240, "sequence", "Wang et al.'s fully convolutional time-series baseline"),
    "gru": Listed("rnn", 13_248, "sequence", "GRU over variable-length sequences"),
    "lstm": Listed("rnn", 17_664, "sequence", "LSTM over variable-length sequences"),
    "minirocket": Listed("rocket", 0, "sequence", "MiniRocket's fixed convolutions and PPV pooling"),
    "mlp": Listed("mlp", 49_536, "vector", "Multi-layer perceptron over flattened inputs"),
    "resnet18": Listed("resnet", 11_168_832, "image", "ResNet-18 (basic blocks), small-input or ImageNet stem"),
    "resnet1d": Listed("conv1d", 504_000, "sequence", "Wang et al.'s residual time-series baseline"),
    "resnet34": Listed("resnet", 21_276_992, "image", "ResNet-34 (basic blocks), small-input or ImageNet stem"),
    "resnet50": Listed("resnet", 23_500_352, "image", "ResNet-50 (bottleneck blocks), small-input or ImageNet stem"),
    "rnn": Listed("rnn", 4_416, "sequence", "Elman RNN over variable-length sequences"),
    "tabular_mlp": Listed("mlp", 24_100, "vector", "MLP over tables"),
    "transformer": Listed("transformer", 67_392, "sequence", "A pre-norm transformer encoder"),
    "vit_micro": Listed("vit", 202_432, "image", "Small ViT for 8x8 to 32x32 images (width 64, 6 blocks, 4x4 patches)"),
    "vit_tiny": Listed("vit", 5_524_416, "image", "ViT-Ti/16 (width 192, 12 blocks, 3 heads, 16x16 patches)"),
}


def registered_rows(pattern: str = "*") -> dict[str, Listed]:
    """The rows for ``pattern`` as the registry gives them (imports torch and every backbone family, and builds
    each matching backbone to count its parameters)."""
    from zoo.registry import get_backbone_entry, list_backbones

    rows = {}
    for name in list_backbones(pattern):
        entry = get_backbone_entry(name)
        summary = re.split(r"[;:]", entry.description)[0].rstrip(".")  # the first clause is enough here
        rows[name] = Listed(entry.family, entry.num_params(), entry.input_kind, summary)
    return rows


def rows_matching(pattern: str) -> dict[str, Listed]:
    """The rows for ``pattern``: from :data:`REGISTERED` (no torch), or from the registry for a prefixed pattern."""
    if "/" in pattern:  # registered names have none: a source's names (timm/..., zoo/...)
        return registered_rows(pattern)
    return {name: row for name, row in sorted(REGISTERED.items()) if fnmatch.fnmatch(name, pattern)}


def list_models(pattern: str = "*") -> None:
    """Print every backbone matching ``pattern``: name, family, parameters, input kind, description."""
    from rich.console import Console
    from rich.table import Table

    rows = rows_matching(pattern)
    if not rows:
        raise ConfigError(f"no registered backbone matches {pattern!r}; run `zoo models` to see them all")
    table = Table(title=f"zoo backbones matching {pattern!r}")
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("description")
    for name, row in rows.items():
        table.add_row(name, row.family, f"{row.params:,}", row.input_kind, row.description)
    Console().print(table)
    print(FOOTNOTE)


def main(argv: list[str]) -> None:
    """Entry point of `zoo models`."""
    if len(argv) > 1 or any(a.startswith("-") for a in argv):
        sys.stderr.write(f"{USAGE}\n")
        sys.exit(2)
    list_models(argv[0] if argv else "*")
