"""Callbacks that watch training: gradient norms, histograms of weights and gradients, a stop on anything
non-finite, and early stopping that waits for a validation metric instead of failing without one."""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.optim import Optimizer

from zoo.compat import foreach_norm, should_update_logs
from zoo.errors import ConfigError, TrainingError
from zoo.tasks.base import NO_DECAY
from zoo.trackers import histogram_loggers, log_histograms

log = logging.getLogger(__name__)


class GradNormMonitor(Callback):
    """Logs gradient norms before clipping: ``grad_norm/total`` and, per layer group, ``grad_norm/<group>``
    (``backbone.layer1``, ..., ``head``; a group's decay and no-decay parameters together).

    Norms are taken on logging steps only (``trainer.log_every_n_steps``), after AMP unscaling and before
    ``gradient_clip_val`` is applied, so they show what clipping acts on. Frozen groups have no gradient
    and are left out.

    Args:
        norm_type: the p of the p-norm (2.0: Euclidean; ``inf``: the largest absolute value).
        per_group: also log one norm per layer group, not only the total.
    """

    def __init__(self, norm_type: float = 2.0, per_group: bool = True) -> None:
        self.norm_type = float(norm_type)
        self.per_group = per_group

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        # The same condition Lightning's own LearningRateMonitor uses for step-level values.
        if not should_update_logs(trainer):
            return
        grads: dict[str, list[torch.Tensor]] = defaultdict(list)
        for index, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"group{index}")).removesuffix(NO_DECAY)
            grads[name].extend(p.grad.detach() for p in group["params"] if p.grad is not None)
        norms = {
            name: torch.linalg.vector_norm(torch.stack(foreach_norm(g, self.norm_type)), self.norm_type)
            for name, g in grads.items()
            if g
        }
        if not norms:
            return
        values = {"grad_norm/total": torch.linalg.vector_norm(torch.stack(list(norms.values())), self.norm_type)}
        if self.per_group:
            values.update({f"grad_norm/{name}": norm for name, norm in norms.items()})
        pl_module.log_dict(values, on_step=True, on_epoch=False)


class ParameterHistograms(Callback):
    """Histograms of every parameter's weights (``weights/<name>``) and gradients (``gradients/<name>``) at the last
    optimizer step of each training epoch, for the run's trackers that show them (TensorBoard, W&B:
    :func:`zoo.trackers.log_histograms`); nothing is computed without one. Taken before the update, after AMP
    unscaling and before clipping (as GradNormMonitor's norms): by the epoch's end Lightning has already cleared the
    gradients for validation. Frozen parameters have weights and no gradients.
    """

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if not trainer.is_global_zero or not histogram_loggers(trainer):
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, param in pl_module.named_parameters():
            tensors[f"weights/{name}"] = param
            if param.grad is not None:
                tensors[f"gradients/{name}"] = param.grad
        log_histograms(trainer, tensors)


class StopOnNonFinite(Callback):
    """Stops training with exit code 1 at the first non-finite value, naming the epoch and step: a NaN or infinite
    training loss (before its backward pass and update), weights that a step made non-finite, or a
    non-finite ``val/loss``.

    With the check in :class:`~zoo.callbacks.checkpointing.ZooCheckpoint` that refuses to write non-finite
    weights, every checkpoint on disk stays finite (Lightning would train on, and its next ``last.ckpt`` would
    hold NaN weights).
    """

    HINT = (
        "Try a lower learning rate, gradient_clip_val, precision 32-true, or check the data for NaN / inf "
        "values; resume from the last checkpoint with --ckpt_path last"
    )

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss)):
            return
        batch = trainer.fit_loop.epoch_loop.batch_idx
        raise TrainingError(
            f"the training loss is {loss.item()} at epoch {trainer.current_epoch}, step {trainer.global_step} "
            f"(batch {batch} of the epoch); training stopped before this step's update, so the weights and "
            f"checkpoints stay finite. {self.HINT}"
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bad = non_finite_tensors(pl_module, changed_by_training=True)
        if bad:
            raise TrainingError(
                f"the training step to step {trainer.global_step} (epoch {trainer.current_epoch}) made {len(bad)} "
                f"tensor(s) non-finite, e.g. {', '.join(bad[:3])}, from a finite loss (weights by the update, "
                f"batch-norm statistics by the forward pass): the steps are too large. Training stopped; no "
                f"checkpoint holds these values. {self.HINT}"
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not bool(torch.isfinite(loss)):
            raise TrainingError(
                f"val/loss is {float(loss)} after epoch {trainer.current_epoch}, step {trainer.global_step}, with "
                f"finite weights: the model overflows on the validation data. Training stopped before this "
                f"validation's checkpoints. {self.HINT}"
            )


def non_finite_tensors(module: nn.Module, changed_by_training: bool = False) -> list[str]:
    """The names of ``module``'s floating-point parameters and buffers (batch norm's running statistics) that
    hold a NaN or an infinity; one fused max-abs pass when all are finite, the common case. Empty tensors are left
    out: under FSDP a process holds nothing of the parameters outside its shard, and the max of nothing fails.

    ``changed_by_training``: only those a training step can change, the parameters that take gradients and the
    buffers of modules in training mode: a frozen backbone (22.7M parameters for MiniLM) is not read at every
    step, which cost more than training a head on its features.
    """
    if changed_by_training:
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        buffers = [
            (f"{prefix}.{n}" if prefix else n, b)
            for prefix, owner in module.named_modules()
            if owner.training
            for n, b in owner.named_buffers(recurse=False)
        ]
    else:
        params, buffers = list(module.named_parameters()), list(module.named_buffers())
    named = [(n, t) for n, t in (*params, *buffers) if t.is_floating_point() and t.numel() > 0]
    tensors = [t.detach() for _, t in named]
    if not tensors or bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=float("inf")))):
        return []
    return [name for name, t in named if not torch.isfinite(t).all()]


class ZooEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping (every argument the same) that waits while no validation metric exists yet,
    with one message, instead of stopping the run.

    No validation split, no validation batches, a run stopped before its first validation (``max_steps``): each
    leaves ``val/*`` unset, and training goes on (or ends) normally. A monitor that is missing while other
    validation metrics exist is a mistyped name, refused with the names there are.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._monitor_logged(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._monitor_logged(trainer):
            super().on_validation_end(trainer, pl_module)

    def _monitor_logged(self, trainer: Trainer) -> bool:
        if not_logged_yet(trainer, self.monitor):
            return False
        if self.monitor not in trainer.callback_metrics and not trainer.sanity_checking:
            stage = self.monitor.partition("/")[0]
            logged = sorted(k for k in trainer.callback_metrics if k.startswith(f"{stage}/"))
            raise ConfigError(
                f"early_stopping.monitor={self.monitor!r} is not a logged metric; the run logs {', '.join(logged)}"
            )
        return True


_TOLD: weakref.WeakSet = weakref.WeakSet()  # the trainers already told there is no validation metric


def not_logged_yet(trainer: Trainer, monitor: str) -> bool:
    """Whether no metric of ``monitor``'s stage (``val/``) exists yet (no validation data or batches, or none run
    so far), said once per run with what the run does without it. False when ``monitor`` is logged, during the
    sanity check, and when others of its stage are (a mistyped name: the caller's to refuse)."""
    metrics = trainer.callback_metrics
    stage = monitor.partition("/")[0]
    if monitor in metrics or trainer.sanity_checking or any(k.startswith(f"{stage}/") for k in metrics):
        return False
    if trainer not in _TOLD and trainer.is_global_zero:
        log.warning(
            "no %s yet (no validation data, no validation batches, or no validation run so far): early "
            "stopping waits for it, and the checkpoints keep the latest weights (last.ckpt)",
            monitor,
        )
    _TOLD.add(trainer)
    return True
