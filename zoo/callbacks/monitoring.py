"""Callbacks that watch training: gradient norms, and a stop on a non-finite loss."""

from __future__ import annotations

from collections import defaultdict

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from zoo.errors import TrainingError


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
        if not trainer._logger_connector.should_update_logs:
            return
        grads: dict[str, list[torch.Tensor]] = defaultdict(list)
        for index, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"group{index}")).removesuffix(".no_decay")
            grads[name].extend(p.grad.detach() for p in group["params"] if p.grad is not None)
        norms = {
            name: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g, self.norm_type)), self.norm_type)
            for name, g in grads.items()
            if g
        }
        if not norms:
            return
        values = {"grad_norm/total": torch.linalg.vector_norm(torch.stack(list(norms.values())), self.norm_type)}
        if self.per_group:
            values.update({f"grad_norm/{name}": norm for name, norm in norms.items()})
        pl_module.log_dict(values, on_step=True, on_epoch=False)


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first NaN or infinite training loss, before its backward pass and update.

    The weights in memory and every checkpoint on disk stay finite (Lightning would train on, and its next
    ``last.ckpt`` would hold NaN weights). The message names the epoch, step and batch.
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss)):
            return
        batch = trainer.fit_loop.epoch_loop.batch_idx
        raise TrainingError(
            f"the training loss is {loss.item()} at epoch {trainer.current_epoch}, step {trainer.global_step} "
            f"(batch {batch} of the epoch); training stopped before this step's update, so the weights and "
            "checkpoints stay finite. Try a lower learning rate, gradient_clip_val, precision 32-true, or check "
            "the data for NaN / inf values; resume from the last checkpoint with --ckpt_path last"
        )
