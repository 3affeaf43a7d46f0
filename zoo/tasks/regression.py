"""Regression: MSE, MAE or Huber loss on standardised targets, metrics in the data's own units."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from zoo.errors import ConfigError
from zoo.heads import RegressionHead
from zoo.tasks.base import ZooTask

_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}


class Regressor(ZooTask):
    """A backbone under a regression head.

    The network predicts targets standardised with the training set's mean and std (linked from the
    datamodule), which keeps the loss well scaled; metrics and predictions are in the original units.

    Args:
        num_targets: number of real values predicted per sample; linked from the datamodule.
        loss: ``mse``, ``mae`` or ``huber``.
        target_mean: per-target mean of the training targets; linked from the datamodule.
        target_std: per-target std of the training targets; linked from the datamodule.
        **kwargs: the arguments of :class:`~zoo.tasks.base.ZooTask`.
    """

    def __init__(
        self,
        backbone: str = "mlp",
        *,
        num_targets: Optional[int] = None,
        loss: Literal["mse", "mae", "huber"] = "mse",
        target_mean: Optional[list[float]] = None,
        target_std: Optional[list[float]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if num_targets is None or num_targets < 1:
            raise ConfigError(
                f"model.num_targets={num_targets}: it comes from a regression datamodule; "
                "a classification dataset needs zoo.tasks.Classifier instead"
            )
        for key, values in (("target_mean", target_mean), ("target_std", target_std)):
            if values is not None and len(values) != num_targets:
                raise ConfigError(f"model.{key} has {len(values)} values but the data has {num_targets} targets")
        self.num_targets = num_targets
        self.loss_fn = _LOSSES[loss]
        self.head = RegressionHead(self.backbone.num_features, num_targets, self.head_dropout)
        self.register_buffer("target_mean", torch.tensor(target_mean or [0.0] * num_targets))
        self.register_buffer("target_std", torch.tensor(target_std or [1.0] * num_targets))
        self._init_metrics()

    def make_metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "mae": MeanAbsoluteError(),
                "rmse": MeanSquaredError(squared=False),
                "r2": R2Score(multioutput="uniform_average"),
            }
        )

    def _standardise(self, target: torch.Tensor) -> torch.Tensor:
        return (target.view(len(target), -1) - self.target_mean) / self.target_std

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, self._standardise(target).to(output.dtype))

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, target: torch.Tensor) -> None:
        pred = self.predictions(output)
        metrics.update(pred.squeeze(-1), target.view(len(target), -1).squeeze(-1).to(pred.dtype))

    def predictions(self, output: torch.Tensor) -> torch.Tensor:
        """Values in the targets' units, ``(B, num_targets)``, from the standardised output."""
        return output * self.target_std + self.target_mean

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Predicted values in the targets' units, ``(B, num_targets)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predictions(self(x))
