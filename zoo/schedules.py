"""Learning-rate schedules the zoo adds to ``torch.optim.lr_scheduler``, usable by ``class_path`` in YAML.

Every ``torch.optim.lr_scheduler`` class works as is; these add what takes several nested schedulers there
(linear warmup then cosine) and need no step count written by hand: a ``total_steps`` left unset is filled
by the task from ``trainer.estimated_stepping_batches`` (epochs x batches / accumulation), which also
serves ``torch.optim.lr_scheduler.OneCycleLR``.
"""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from zoo.errors import ConfigError


class WarmupCosineLR(LambdaLR):
    """Linear warmup from ``warmup_start_factor x lr`` to ``lr``, then a cosine decay to ``min_lr_factor x lr``.

    Stepped after every optimizer step (``interval = "step"``), as in BERT, ViT and most fine-tuning recipes.
    Each parameter group keeps its own base LR, so discriminative LRs keep their ratios throughout.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: optimizer steps of the whole run; unset: filled from the trainer by the task.
        warmup_steps: steps of linear warmup; unset: ``warmup_fraction`` of ``total_steps``.
        warmup_fraction: warmup length as a fraction of ``total_steps`` when ``warmup_steps`` is unset.
        warmup_start_factor: LR multiplier at step 0.
        min_lr_factor: LR multiplier reached at ``total_steps`` (and kept after it).
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: Optional[int] = None,
        warmup_steps: Optional[int] = None,
        warmup_fraction: float = 0.05,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None:
            raise ConfigError(
                "WarmupCosineLR needs total_steps: a zoo task fills it from the trainer; when building the "
                "scheduler yourself, pass total_steps (optimizer steps of the whole run)"
            )
        if total_steps < 1:
            raise ConfigError(f"WarmupCosineLR: total_steps={total_steps} must be at least 1")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"WarmupCosineLR: warmup_fraction={warmup_fraction} must be in [0, 1)")
        if warmup_steps is None:
            warmup_steps = round(warmup_fraction * total_steps)
        if not 0 <= warmup_steps < total_steps:
            raise ConfigError(
                f"WarmupCosineLR: warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}); the run "
                "has fewer optimizer steps than the warmup"
            )
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = warmup_start_factor
        self.min_lr_factor = min_lr_factor
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """The LR multiplier after ``step`` optimizer steps."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_factor + (1.0 - self.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        # LambdaLR would try to pickle the bound method `factor`; everything it needs is in the attributes.
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)
