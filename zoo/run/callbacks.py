"""The callbacks and plugins every zoo run gets unless told otherwise, and when the user's own replace them."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichModelSummary,
)
from lightning.pytorch.callbacks.model_summary import ModelSummary
from lightning.pytorch.plugins.io import CheckpointIO

from zoo.callbacks.feature_cache import FeatureCache
from zoo.callbacks.finetuning import FineTuning
from zoo.callbacks.layer_stats import LayerStats
from zoo.callbacks.monitoring import GradNormMonitor, ParameterHistograms, StopOnNonFinite
from zoo.callbacks.pictures import RunPictures
from zoo.callbacks.progress import ZooProgressBar
from zoo.run.files import AtomicCheckpointIO, MetricsInRunFolder


def default_callbacks(
    configured: list[Any], trainer_config: dict[str, Any], pictures: bool = True, diagnose: bool = True
) -> list[Any]:
    """The run's callbacks beside the user's own ``trainer.callbacks``.

    Args:
        configured: the callbacks of the config's own groups (checkpoint, finetuning, feature_cache, early_stopping).
        trainer_config: the trainer's settings; ``enable_model_summary`` is turned off there when a summary
            callback is in the run (else Lightning logs on every run that it skips its own).
        pictures: draw the run's pictures where there is a run folder (a logger).
        diagnose: record per-layer statistics for the diagnosis where there is a run folder (a logger).

    Returns:
        ``configured`` (less the checkpoint without checkpointing, the fine-tuning or feature-cache group when the
        user gives their own in ``trainer.callbacks``) and the defaults: progress bar, model summary, LR and
        gradient-norm monitors, histograms of weights and gradients, metrics.csv in the run folder, the non-finite
        stop, the pictures and the layer statistics, each unless turned off or replaced by the user's own.
    """
    callbacks = list(configured)
    if trainer_config.get("enable_checkpointing") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    user = trainer_config.get("callbacks") or []
    user = user if isinstance(user, list) else [user]
    for own in (FineTuning, FeatureCache):  # the user's own in trainer.callbacks replaces the config's group
        if has(user, own):
            callbacks = [c for c in callbacks if not isinstance(c, own)]
    # Rich progress and summary by default, unless turned off or replaced by the user's own.
    if trainer_config.get("enable_progress_bar", True) is not False and not has(user, ProgressBar):
        callbacks.append(ZooProgressBar())
    if trainer_config.get("enable_model_summary", True) is not False and not has(user, ModelSummary):
        callbacks.append(RichModelSummary(max_depth=1))
    if has([*user, *callbacks], ModelSummary):  # else Lightning logs on every run that it skips its own
        trainer_config["enable_model_summary"] = False
    logged = trainer_config.get("logger") not in (None, False)
    if logged and not has(user, LearningRateMonitor):
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if logged and not has(user, GradNormMonitor):
        callbacks.append(GradNormMonitor())
    if logged and not has(user, ParameterHistograms):  # computed only for trackers that show histograms
        callbacks.append(ParameterHistograms())
    if logged and not has(user, MetricsInRunFolder):  # metrics.csv whatever the tracker: `zoo report` reads it
        callbacks.append(MetricsInRunFolder())
    if trainer_config.get("limit_val_batches") == 0:
        callbacks = without_validation(callbacks)
    if not has(user, StopOnNonFinite):
        callbacks.append(StopOnNonFinite())
    # The run's pictures by default where there is a run folder (a logger), unless turned off or the user's own.
    if pictures and logged and not has(user, RunPictures):
        callbacks.append(RunPictures())
    # What `zoo diagnose` reads (layer_stats.csv), likewise.
    if diagnose and logged and not has(user, LayerStats):
        callbacks.append(LayerStats())
    return callbacks


def default_plugins(trainer_config: dict[str, Any], trusted: Any) -> None:
    """Checkpoints written whole or not at all and read without running code (AtomicCheckpointIO, trusting the
    classes ``trusted`` names), unless the user gives their own CheckpointIO; set in ``trainer_config``."""
    plugins = trainer_config.get("plugins") or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        trainer_config["plugins"] = [*plugins, AtomicCheckpointIO(trusted=trusted)]


def without_validation(callbacks: list[Any]) -> list[Any]:
    """With ``limit_val_batches=0`` nothing logs ``val/*``: early stopping on it goes, checkpoints keep the last."""
    kept = []
    for callback in callbacks:
        monitor = str(getattr(callback, "monitor", None) or "")
        if isinstance(callback, EarlyStopping) and monitor.startswith("val/"):
            print(f"no validation (limit_val_batches=0): early stopping on {monitor} is off", file=sys.stderr)
            continue
        if isinstance(callback, ModelCheckpoint) and monitor.startswith("val/"):
            callback.monitor, callback.save_top_k = None, 1  # one checkpoint, the latest (plus last.ckpt)
        kept.append(callback)
    return kept


def has(callbacks: list[Any], kind: type) -> bool:
    """Whether any of ``callbacks`` is a ``kind``."""
    return any(isinstance(c, kind) for c in callbacks)
