"""What the diagnosis says and the helpers its rules share: a :class:`Finding` (severity, evidence, remedies), the
usual remedies by name, and small readings of a :class:`~zoo.diagnosis.record.Record` (medians, thirds, the loss
of a guess, the layers' statistics over a run)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from zoo.diagnosis.record import PARAM, LayerSeries, Record

PROBLEM, WARNING, INFO = "problem", "warning", "info"  # the run's result suffers / worth a look / for the record
SEVERITIES = (PROBLEM, WARNING, INFO)
MIN_EPOCHS, MIN_STEPS = 3, 10  # fewer recorded than this: the curves say nothing yet
BARELY = 0.05  # a loss that moved by less than this share of itself over the run


@dataclass
class Finding:
    """One thing the diagnosis names: what, how sure (``problem`` / ``warning`` / ``info``), the evidence and
    the usual remedies; ``numbers`` are the evidence's values for programs (diagnosis.json, the loggers)."""

    code: str
    severity: str
    title: str
    evidence: str
    remedies: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


REMEDIES = {
    "init": "He (kaiming) initialisation for ReLU-family layers, Xavier for tanh / sigmoid "
    "(model.backbone_kwargs.init)",
    "norm": "batch norm or layer norm between layers (model.backbone_kwargs.norm)",
    "residual": "residual connections (a resnet backbone)",
    "relu": "ReLU-family activations (relu, gelu) in the hidden layers instead of sigmoid / tanh",
    "clip": "gradient clipping (trainer.gradient_clip_val: 1.0)",
    "lower_lr": "a lower learning rate: `zoo lr-find --config CONFIG` suggests one",
    "higher_lr": "a higher learning rate: `zoo lr-find --config CONFIG` suggests one",
    "warmup": "a warmup of the learning rate (zoo.schedules.WarmupCosineLR)",
    "leaky": "leaky_relu or gelu, which pass a gradient below 0; zero biases at the start",
    "regularise": "dropout (model.backbone_kwargs.dropout, model.head_dropout), weight decay, augmentation "
    "(data.augment)",
    "early_stop": "early stopping (early_stopping.patience) and the best checkpoint (the default)",
    "data_or_smaller": "more data, or a smaller model",
    "less_regularisation": "less regularisation (lower dropout and weight decay, milder augmentation)",
    "bigger": "a larger model, or longer training",
    "val_split": "a larger validation split (data.val_split), or --selection last to train on every sample and "
    "keep the last weights",
    "labels": "check the labels and the class balance (model.class_weights)",
}


# --- small helpers over series ------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def thirds(values: list[Any]) -> tuple[list[Any], list[Any]]:
    """The first and the last third of ``values`` (at least one each)."""
    size = max(1, len(values) // 3)
    return values[:size], values[-size:]


def chance_loss(record: Record) -> Optional[float]:
    """The loss of a guess that knows nothing: ln(classes) for a classifier's cross-entropy, 1 for a regressor's
    MSE on standardised targets (the zoo's); None where neither applies."""
    task = str(record.setting("model.class_path", ""))
    classes = record.hparams.get("num_classes") or record.setting("model.num_classes")
    if task.endswith("Classifier") and isinstance(classes, int) and classes > 1:
        return math.log(classes)
    if task.endswith("Regressor") and record.setting("model.loss", "mse") == "mse":
        return 1.0
    return None


def majority(record: Record) -> Optional[float]:
    """The majority class's share: of the test split (its baseline), else of the training labels."""
    share = record.test.get("baseline/majority/acc", record.facts.get("majority_fraction"))
    return float(share) if share is not None else None


def losses(record: Record) -> list[float]:
    """The training loss over the run: per logged step where recorded, else per epoch."""
    steps = [v for _, v in record.step_curve("train/loss_step")]
    return steps if len(steps) >= MIN_STEPS else [v for _, v in record.curve("train/loss")]


def layer_medians(record: Record, stat: str, kind: str = PARAM) -> list[tuple[LayerSeries, float]]:
    """Each layer of ``kind`` (in forward order) with the median of ``stat`` over the run, where recorded."""
    found = []
    for layer in record.layers:
        values = [v for v in layer.values(stat) if math.isfinite(v)]
        if layer.kind == kind and values:
            found.append((layer, median(values)))
    return found


def grad_norms(record: Record, steady: bool = False) -> list[tuple[int, float]]:
    """The total gradient norm (before clipping) per logged step: GradNormMonitor's, else the layers' combined.
    ``steady``: over the layers that had a gradient on every logged step only (from the layer statistics, where
    recorded), so that a group unfrozen by a fine-tuning schedule does not read as a gradient that grew."""
    logged = record.step_curve("grad_norm/total")
    if logged and not (steady and record.layers):
        return logged
    layers = [layer for layer in record.layers if not steady or None not in layer.stats["grad_norm"]]
    squares: dict[int, float] = {}
    for layer in layers:
        for step, value in zip(layer.steps, layer.stats["grad_norm"]):
            if value is not None:
                squares[step] = squares.get(step, 0.0) + value * value
    return sorted((step, math.sqrt(square)) for step, square in squares.items())


def epochs_text(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def listed(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def largest_update(record: Record, share: float = 0.0) -> Optional[tuple[LayerSeries, float]]:
    """The layer whose weights change most per step (median update ratio over the run), None without stats. With
    ``share``, the layer that this share of the layers beats or equals (0.25: three quarters of the layers change
    less), so that one fast head does not speak for the whole network."""
    layers = sorted(layer_medians(record, "update_ratio"), key=lambda item: item[1])
    return layers[min(len(layers) - 1, int(len(layers) * (1 - share)))] if layers else None
