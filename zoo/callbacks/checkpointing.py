"""Checkpoints that lose nothing: ``last.ckpt`` always the latest step, RNG states for exact resumes, a
checkpoint on SIGTERM (preemption) or Ctrl+C that resumes wherever it was written, and never a non-finite one."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zoo.callbacks.monitoring import non_finite_tensors, not_logged_yet
from zoo.compat import last_step_saved, save_last_checkpoint, saves_on_train_epoch_end
from zoo.errors import TrainingError

log = logging.getLogger(__name__)

RNG_KEY = "zoo_rng_states"
IN_VALIDATION_KEY = "zoo_written_in_validation"  # a SIGTERM checkpoint taken during validation: it is redone


class ZooCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every argument the same) with three guarantees:

    - ``last.ckpt`` holds the latest step at every save point, whatever ``monitor`` / ``save_top_k`` say
      (Lightning 2.6 rewrites it only when a top-k checkpoint is saved at the same step, so with a
      monitored metric it can hold an old epoch).
    - Every checkpoint carries the RNG states (torch, CUDA, NumPy, Python) as tensors; a resumed fit puts
      them back, so a shuffled run resumed from ``last.ckpt`` ends with
      bit-identical weights (one process; under DDP the data order is exact, each rank's dropout is not).
    - SIGTERM (a preempted or cancelled job) or Ctrl+C writes ``last.ckpt`` at the current step before the
      run stops; ``zoo fit ... --ckpt_path last`` resumes from it. Stopped during validation, the checkpoint
      says so, and the resumed run redoes that validation.
    - No checkpoint holds a non-finite weight or buffer: such a save stops the run instead (exit code 1).

    While the monitored metric does not exist yet (no validation data or batches, or none run so far), the
    top-k checkpoints wait for it, with one message, and ``last.ckpt`` keeps the latest weights.
    """

    # --- last.ckpt at every save point -----------------------------------------------------------
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._monitor_exists(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        # Always: steps after the epoch's last validation (val_check_interval), or an epoch without one
        # (check_val_every_n_epoch), would otherwise be in no checkpoint. A validation at this step saved already.
        self._save_last_if_stale(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_stale(trainer)  # max_steps or max_time reached inside an epoch

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._monitor_exists(trainer):
            super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._save_last_if_stale(trainer)

    def _monitor_exists(self, trainer: Trainer) -> bool:
        # A mistyped monitor counts as existing: Lightning's own error names the metrics there are.
        return self.monitor is None or not not_logged_yet(trainer, self.monitor)

    def _save_last_if_stale(self, trainer: Trainer) -> None:
        # Lightning writes last.ckpt whenever it writes a top-k one, so a save at this step means last is current.
        if not self.save_last or not _fitting(trainer) or last_step_saved(self) == trainer.global_step:
            return
        save_last_checkpoint(self, trainer)

    # --- preemption ------------------------------------------------------------------------------
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        stopped = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        if not (stopped and self.save_last and _fitting(trainer)):
            return
        mid_validation = trainer.state.stage == RunningStage.VALIDATING
        if mid_validation or last_step_saved(self) != trainer.global_step:
            self._stopped_mid_validation = mid_validation
            try:
                save_last_checkpoint(self, trainer)
            finally:
                self._stopped_mid_validation = False
            log.warning(
                "stopped at step %d%s: %s written; resume with --ckpt_path last",
                trainer.global_step,
                " during validation" if mid_validation else "",
                self.last_model_path,
            )

    # --- what every checkpoint holds -------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = non_finite_tensors(pl_module)
        if bad:  # the last line of defence: StopOnNonFinite stops such a run first
            raise TrainingError(
                f"not writing a checkpoint at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}: {len(bad)} tensor(s) of the model are non-finite, e.g. "
                f"{', '.join(bad[:3])}. The previous checkpoints are kept"
            )
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint[RNG_KEY] = rng_states()
        if getattr(self, "_stopped_mid_validation", False):
            restart_validation(checkpoint)
            checkpoint[IN_VALIDATION_KEY] = True

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        states = checkpoint.get(RNG_KEY)
        if states is None or trainer.state.fn != TrainerFn.FITTING:
            return
        if checkpoint.get(IN_VALIDATION_KEY):
            # Lightning re-enters the interrupted epoch first (its loader's iterator draws a seed): the states go
            # back where they were taken, when the redone validation starts.
            self._rng_at_validation = states
        else:
            # Now: what runs between here and the first batch draws nothing from them (Lightning runs its
            # sanity check under isolate_rng), so the resumed first epoch draws what the uninterrupted one drew.
            set_rng_states(states)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        states = getattr(self, "_rng_at_validation", None)
        if states is not None and not trainer.sanity_checking:
            set_rng_states(states)
            self._rng_at_validation = None


def restart_validation(checkpoint: dict[str, Any]) -> None:
    """Mark a checkpoint written during a fit's validation so that the resumed fit redoes that validation.

    Lightning resumes a fit whose validation loop stopped between two batches as if validation had finished, so
    it never runs (no ``val/*`` for that epoch: early stopping and the best checkpoint have nothing to go on). Its
    loop does redo a validation it finds stopped inside a batch (``restarted_mid_evaluation``), from the first
    batch: the progress written here is that state, with no batch completed.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    done = progress["total"]["completed"] - progress["current"]["completed"]  # batches of earlier validations
    progress["total"] = {"ready": done + 1, "started": done + 1, "processed": done, "completed": done}
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False


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
