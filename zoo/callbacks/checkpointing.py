"""Checkpoints that lose nothing: ``last.ckpt`` always the latest step, RNG states for exact resumes, and a
checkpoint on SIGTERM (preemption) or Ctrl+C."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

RNG_KEY = "zoo_rng_states"


class ZooCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every argument the same) with three guarantees:

    - ``last.ckpt`` holds the latest step at every save point, whatever ``monitor`` / ``save_top_k`` say
      (Lightning 2.6 rewrites it only when a top-k checkpoint is saved at the same step, so with a
      monitored metric it can hold an old epoch).
    - Every checkpoint carries the RNG states (torch, CUDA, NumPy, Python) as tensors; a resumed fit puts
      them back, so a shuffled run resumed from ``last.ckpt`` ends with
      bit-identical weights (one process; under DDP the data order is exact, each rank's dropout is not).
    - SIGTERM (a preempted or cancelled job) or Ctrl+C writes ``last.ckpt`` at the current step before the
      run stops; ``zoo fit ... --ckpt_path last`` resumes from it.
    """

    # --- last.ckpt at every save point -----------------------------------------------------------
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: Trainer) -> None:
        # Lightning writes last.ckpt whenever it writes a top-k one, so a save at this step means last is current.
        if not self.save_last or not _fitting(trainer) or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # --- preemption ------------------------------------------------------------------------------
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        stopped = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        if stopped and self.save_last and _fitting(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            log.warning("stopped at step %d: %s written; resume with --ckpt_path last", trainer.global_step,
                        self.last_model_path)  # fmt: skip

    # --- RNG states ------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Put back now: what runs between here and the first batch draws nothing from them (Lightning runs its
        # sanity check under isolate_rng), so the resumed first epoch draws what the uninterrupted one drew.
        states = checkpoint.get(RNG_KEY)
        if states is not None and trainer.state.fn == TrainerFn.FITTING:
            set_rng_states(states)


def _fitting(trainer: Trainer) -> bool:
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run


def rng_states() -> dict[str, torch.Tensor]:
    """Every RNG a training step can draw from, as tensors (a checkpoint loads with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    values = states["python"].tolist()
    gauss = states["python_gauss"].item()
    random.setstate((values[0], tuple(values[1:]), None if gauss != gauss else gauss))
    pos, has_gauss, cached = states["numpy_extra"].tolist()
    np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
