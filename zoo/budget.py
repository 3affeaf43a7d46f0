"""How long a run trains and which weights it keeps, decided from the data's size before training.

A recipe states its budget in optimizer steps (``--steps 2000`` or ``--steps auto``), not epochs: 30 epochs
are 30 steps on 36 series and 30,000 on a large set, and neither number says whether the model learnt. The
epochs follow from the training split's size, the batch size is capped so an epoch has several steps, and
step-based schedules (``zoo.schedules.WarmupCosineLR``, OneCycleLR) count the same steps.

Which weights are tested (``--selection``): picking the "best" epoch on a handful of validation samples picks
noise (ArrowHead's 4 validation series score 0.25 at every epoch, so the "best" checkpoint is the first). Below
:data:`MIN_VAL_SAMPLES` the validation split joins the training data and the run keeps its last weights after
the fixed budget, as Fawaz et al. (2019) train on the UCR archive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

# The fewest validation samples to select a checkpoint on: at 50, one sample moves accuracy by 2 points and the
# standard error of an accuracy near 0.8 is about 6 points; fewer is a coin toss between close epochs.
MIN_VAL_SAMPLES = 50
MIN_STEPS = 100  # fewer optimizer steps than this rarely train a network from scratch: said before training
MIN_STEPS_PER_EPOCH = 4  # the batch size is capped so that an epoch has at least this many steps
AUTO_EPOCHS, AUTO_MIN_STEPS, AUTO_MAX_STEPS = 10, 1_000, 10_000

Steps = Union[int, Literal["auto"], None]
Selection = Literal["auto", "best", "last"]


@dataclass
class Plan:
    """What the run will do: the batch size, the optimizer steps and epochs (None: the trainer's own), whether
    it keeps the best or the last weights, and one line of reasons per decision."""

    batch_size: int
    steps: Optional[int]
    epochs: Optional[int]
    selection: Literal["best", "last"]
    notes: list[str] = field(default_factory=list)


def plan(
    train_size: int,
    val_size: int,
    batch_size: int,
    steps: Steps,
    selection: Selection = "auto",
    processes: int = 1,
    accumulate: int = 1,
    max_epochs: Optional[int] = None,
    max_steps: int = -1,
) -> Plan:
    """The budget and the model selection for a training split of ``train_size`` samples.

    Args:
        train_size: training samples (before any validation samples join them).
        val_size: validation samples; 0 where the data has none.
        batch_size: the data's batch size, capped here so an epoch has :data:`MIN_STEPS_PER_EPOCH` steps.
        steps: optimizer steps; ``auto`` is ``AUTO_EPOCHS`` epochs, kept within
            ``[AUTO_MIN_STEPS, AUTO_MAX_STEPS]``; None leaves the trainer's epochs and steps as they are.
        selection: ``best`` (checkpoint by validation loss), ``last`` (train on train + validation, keep the
            last weights) or ``auto`` (``best`` from :data:`MIN_VAL_SAMPLES` validation samples up).
        processes: data-parallel processes, each reading its share of a batch's samples.
        accumulate: batches per optimizer step.
        max_epochs, max_steps: the trainer's. With ``steps``, a ``max_epochs`` that ends the run sooner is kept as
            a limit; without, a run they make too short is named.
    """
    notes: list[str] = []
    chosen: Literal["best", "last"]
    if selection == "auto":
        chosen = "best" if val_size >= MIN_VAL_SAMPLES else "last"
        if chosen == "last":
            why = "no validation split" if val_size == 0 else f"a validation split of {val_size} samples"
            notes.append(
                f"selection: {why} (under {MIN_VAL_SAMPLES}) cannot tell epochs apart, so it joins the training "
                f"data ({train_size + val_size} samples) and the last weights after the fixed budget are tested; "
                "--selection best selects on it anyway"
            )
    else:
        chosen = selection
        if chosen == "best" and 0 < val_size < MIN_VAL_SAMPLES:
            notes.append(
                f"selection: the best checkpoint is picked on {val_size} validation samples, fewer than "
                f"{MIN_VAL_SAMPLES}: expect it to follow noise (--selection auto trains on them instead)"
            )
    samples = train_size + (val_size if chosen == "last" else 0)
    per_process = math.ceil(samples / processes)
    cap = max(1, per_process // MIN_STEPS_PER_EPOCH)
    if batch_size > cap:
        notes.append(
            f"budget: data.batch_size {batch_size} -> {cap}, so that an epoch over {per_process} samples has "
            f"{MIN_STEPS_PER_EPOCH} or more optimizer steps"
        )
        batch_size = cap
    per_epoch = max(1, math.ceil(per_process / batch_size) // accumulate)
    if steps is None:
        planned = [n for n in (max_steps if max_steps > 0 else None, (max_epochs or 0) * per_epoch or None) if n]
        if planned and min(planned) < MIN_STEPS:
            notes.append(
                f"budget: this run takes only {min(planned)} optimizer steps ({per_epoch} per epoch over {samples} "
                f"samples), few to train a network (under {MIN_STEPS}); set --steps (or --steps auto) to state the "
                "budget in steps, or raise trainer.max_epochs"
            )
        return Plan(batch_size, None, None, chosen, notes)
    if steps == "auto":
        steps = min(max(AUTO_EPOCHS * per_epoch, AUTO_MIN_STEPS), AUTO_MAX_STEPS)
    if steps < 1:
        from zoo.errors import ConfigError

        raise ConfigError(f"--steps={steps} must be a positive number of optimizer steps, or auto")
    epochs = math.ceil(steps / per_epoch)
    capped = ""
    if max_epochs is not None and 0 < max_epochs < epochs:  # a trainer.max_epochs given as well stays a limit
        epochs, steps, capped = max_epochs, min(steps, max_epochs * per_epoch), ", capped by trainer.max_epochs"
    notes.append(
        f"budget: {steps} optimizer steps = {epochs} epochs of {per_epoch} steps ({samples} samples, "
        f"batches of {batch_size}){capped}"
    )
    if steps < MIN_STEPS:
        notes.append(
            f"budget: {steps} optimizer steps are few to train a network (under {MIN_STEPS}); raise --steps, "
            "or use --steps auto"
        )
    return Plan(batch_size, steps, epochs, chosen, notes)
