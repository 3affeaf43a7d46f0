"""Classification: multiclass and binary, cross-entropy with label smoothing and class weights."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import AUROC, Accuracy, ConfusionMatrix, F1Score, MetricCollection

from zoo.errors import ConfigError
from zoo.heads import ClassificationHead
from zoo.tasks.base import ZooTask


class Classifier(ZooTask):
    """A backbone under a classification head.

    Binary problems use two logits and the same cross-entropy; they also report AUROC.

    Args:
        num_classes: number of classes; linked from the datamodule.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        class_weights: one loss weight per class, for imbalanced data.
        (the rest as in :class:`~zoo.tasks.base.ZooTask`)
    """

    monitor = "val/loss"

    def __init__(
        self,
        backbone: str = "mlp",
        backbone_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Union[bool, str, None] = None,
        num_classes: Optional[int] = None,
        input_shape: Optional[tuple[int, ...]] = None,
        vocab_size: Optional[int] = None,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: Optional[list[float]] = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(
            backbone, backbone_kwargs, pretrained, input_shape, vocab_size, head_dropout, optimizer, lr_scheduler
        )
        self.save_hyperparameters()
        self._prune_hparams()
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
        self.head = ClassificationHead(self.backbone.num_features, num_classes, head_dropout)
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
        return F.cross_entropy(output, target, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, target: torch.Tensor) -> None:
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

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities, ``(B, num_classes)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(-1)
