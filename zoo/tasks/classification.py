"""Classification: multiclass and binary, cross-entropy with label smoothing and class weights."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torchmetrics import AUROC, Accuracy, ConfusionMatrix, F1Score, MetricCollection

from zoo.errors import ConfigError
from zoo.heads import ClassificationHead
from zoo.tasks.base import ZooTask


class Classifier(ZooTask):
    """A backbone under a classification head.

    Binary problems use two logits and the same cross-entropy; they also report AUROC. Targets may be class
    indices ``(B,)`` or class probabilities ``(B, num_classes)``, which MixUp / CutMix make of training batches
    (:class:`datamodules.augment.BatchMix`); metrics then count the most probable class as the label.

    Args:
        num_classes: number of classes; linked from the datamodule.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        class_weights: one loss weight per class, for imbalanced data.
        **kwargs: the arguments of :class:`~zoo.tasks.base.ZooTask`.
    """

    monitor = "val/loss"
    accepts_soft_targets = True  # what a datamodule checks before it mixes labels into probabilities

    def __init__(
        self,
        backbone: str = "mlp",
        *,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        class_weights: Optional[list[float]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if num_classes is None or num_classes < 2:
            raise ConfigError(
                f"model.num_classes={num_classes}: a classifier needs at least 2 classes. It comes from the "
                "datamodule; a regression dataset needs zoo.tasks.Regressor instead"
            )
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"model.class_weights has {len(class_weights)} values but the data has {num_classes} classes"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing} must be in [0, 1)")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.head = ClassificationHead(self.backbone.num_features, num_classes, self.head_dropout)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights)
        self._init_metrics()
        # Rows: true class. Filled by the same val / test steps as the metrics (nothing runs the model again)
        # and read by zoo.callbacks.RunPictures; never logged as a scalar, so reset here at each epoch's start.
        self.val_confusion = ConfusionMatrix(task="multiclass", num_classes=num_classes)
        self.test_confusion = ConfusionMatrix(task="multiclass", num_classes=num_classes)

    def make_metrics(self) -> MetricCollection:
        metrics: dict[str, Any] = {
            "acc": Accuracy(task="multiclass", num_classes=self.num_classes),
            "f1": F1Score(task="multiclass", num_classes=self.num_classes, average="macro"),
        }
        if self.num_classes == 2:
            metrics["auroc"] = AUROC(task="binary")
        return MetricCollection(metrics)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices ``(B,)`` or class probabilities ``(B, num_classes)``."""
        options = {"weight": self.class_weights, "label_smoothing": self.label_smoothing}
        if not target.is_floating_point():
            return F.cross_entropy(output, target, **options)
        per_sample = F.cross_entropy(output, target.to(output.dtype), reduction="none", **options)
        if self.class_weights is None:
            return per_sample.mean()
        # PyTorch averages weighted class indices over the weights of the labels, sum_i w[y_i], but weighted
        # probabilities over the batch size. Dividing by their own label weight, sum_i sum_c w_c p_ic, keeps one
        # meaning: one-hot probabilities give exactly the loss of their class indices.
        return per_sample.sum() / (target.to(per_sample.dtype) @ self.class_weights.to(per_sample.dtype)).sum()

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, target: torch.Tensor) -> None:
        if target.is_floating_point():  # class probabilities (MixUp / CutMix): the metrics take the likeliest class
            target = target.argmax(-1)
        for name, metric in metrics.items(keep_base=True):
            # AUROC ranks the positive class's probability; the others take the logits.
            metric.update(output.softmax(-1)[:, 1] if name == "auroc" else output, target)
        if metrics is self.val_metrics:
            self.val_confusion.update(output, target)
        elif metrics is self.test_metrics:
            self.test_confusion.update(output, target)

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def predictions(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities, ``(B, num_classes)``, from the logits."""
        return output.softmax(-1)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities, ``(B, num_classes)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predictions(self(x))
