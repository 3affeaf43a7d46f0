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
    """Sends ``signal`` to this process (or only to global rank ``rank``) at the start of a training batch, or of
    a validation batch (the sanity check's excepted).

    Args:
        epoch: the epoch (from 0).
        batch: the batch of that epoch (from 0).
        signal: a signal name: KILL, TERM, INT.
        rank: only the process of this global rank sends it; -1: every process.
        stage: ``train`` or ``val``: whose batch.
    """

    def __init__(self, epoch: int, batch: int, signal: str = "KILL", rank: int = -1, stage: str = "train") -> None:
        self.epoch, self.batch, self.signal, self.rank, self.stage = epoch, batch, signal, rank, stage

    def _maybe_send(self, trainer: Trainer, stage: str, batch_idx: int) -> None:
        here = (stage, trainer.current_epoch, batch_idx) == (self.stage, self.epoch, self.batch)
        if here and not trainer.sanity_checking and self.rank in (-1, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._maybe_send(trainer, "train", batch_idx)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._maybe_send(trainer, "val", batch_idx)


class PoisonBatch(Callback):
    """Fills one training (or validation) batch's inputs with NaN, so its loss is NaN.

    Args:
        epoch: the epoch (from 0).
        batch: the batch of that epoch (from 0).
        stage: ``train`` or ``val``: whose batch.
    """

    def __init__(self, epoch: int, batch: int, stage: str = "train") -> None:
        self.epoch, self.batch, self.stage = epoch, batch, stage

    def _poison(self, trainer: Trainer, stage: str, batch: Any, batch_idx: int) -> None:
        if (stage, trainer.current_epoch, batch_idx) == (
            self.stage,
            self.epoch,
            self.batch,
        ) and not trainer.sanity_checking:
            inputs = batch[0]
            assert isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
            inputs.fill_(float("nan"))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._poison(trainer, "train", batch, batch_idx)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._poison(trainer, "val", batch, batch_idx)
