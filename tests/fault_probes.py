"""Test-only callbacks that break a `zoo fit` run on purpose, for tests/test_reliability.py.

Given on the command line as ``--trainer.callbacks+=tests.fault_probes.SignalAt --trainer.callbacks.epoch=2 ...``
(the repo root is on ``sys.path`` since ``cli.py`` lives there).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SignalAt(Callback):
    """Sends ``signal`` to this process (or only to global rank ``rank``) at the start of a training batch.

    Args:
        epoch: the epoch (from 0).
        batch: the batch of that epoch (from 0).
        signal: a signal name: KILL, TERM, INT.
        rank: only the process of this global rank sends it; -1: every process.
    """

    def __init__(self, epoch: int, batch: int, signal: str = "KILL", rank: int = -1) -> None:
        self.epoch, self.batch, self.signal, self.rank = epoch, batch, signal, rank

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and self.rank in (-1, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))


class PoisonBatch(Callback):
    """Fills one training batch's inputs with NaN, so its loss is NaN.

    Args:
        epoch: the epoch (from 0).
        batch: the batch of that epoch (from 0).
    """

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            inputs = batch[0]
            assert isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
            inputs.fill_(float("nan"))
