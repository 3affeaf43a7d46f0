"""The progress bar of `zoo fit / validate / test / predict`."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


class ZooProgressBar(RichProgressBar):
    """Lightning's Rich progress bar without ``v_num``, the logger's version number, which the run folder
    (``runs/<name>/version_<n>``) already names."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
