"""What `zoo export` produces and checks, shared by the exporter (:mod:`zoo.commands.export`) and the model card
it writes (:mod:`zoo.commands.model_card`): the inputs a graph takes, one written file with its check, and the
checkpoint facts both read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

CHECK_BATCHES = (1, 3)  # the traced example has 2 samples, so both are shapes the exporter never saw


@dataclass
class ModelInputs:
    """What an exported graph takes: input names, the example batch traced, its dynamic dims, check batches."""

    names: tuple[str, ...]
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...]
    samples: list[tuple[torch.Tensor, ...]]
    max_steps: Optional[int] = None  # sequence inputs: the longest length the graph takes


@dataclass
class Exported:
    """One file written by `zoo export`, with the check it passed."""

    format: str
    path: Path
    max_abs_diff: Optional[float] = None
    detail: str = ""


def vocab_size(task: Any) -> Optional[int]:
    """The vocabulary size of a text model's token ids (None for other models)."""
    hf_config = getattr(getattr(task.backbone, "model", None), "config", None)  # a transformers encoder
    found = getattr(task.backbone, "vocab_size", None) or task.hparams.get("vocab_size")
    return found or getattr(hf_config, "vocab_size", None)


def plain(value: Any) -> Any:
    """A JSON-safe copy (tuples as lists, anything else as its string), also fit for ``yaml.safe_dump``."""
    return json.loads(json.dumps(value, default=str))


def init_kwargs(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The task's constructor arguments from its hyperparameters, without the optimizer (not needed to use it)."""
    skip = {"_class_path", "_instantiator", "optimizer", "lr_scheduler"}
    kwargs = {k: plain(v) for k, v in ckpt["hyper_parameters"].items() if k not in skip}
    return {**kwargs, "pretrained": False}  # the weights come from the export


def size_text(num_bytes: float) -> str:
    """A file size as people read it: ``812 B``, ``3.4 MB``."""
    for unit in ("B", "kB", "MB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


def check_text(result: Exported) -> str:
    """The check an exported file passed, in words."""
    if result.max_abs_diff is None:
        return result.detail
    return f"max abs diff {result.max_abs_diff:.2g} vs PyTorch ({result.detail})"
