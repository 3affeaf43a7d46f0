"""The rules that read the run's curves and results rather than its layers: over- and underfitting, a best epoch
that is the first, a validation set too small to select on, a constant prediction, a fit stopped by a non-finite
value. Each a small pure function from a :class:`~zoo.diagnosis.record.Record` to a
:class:`~zoo.diagnosis.findings.Finding` or None; :mod:`zoo.diagnosis.rules` lists them with the others."""

from __future__ import annotations

import math
from typing import Optional

from zoo.budget import MIN_VAL_SAMPLES
from zoo.diagnosis.findings import (
    BARELY,
    MIN_EPOCHS,
    PROBLEM,
    REMEDIES,
    WARNING,
    Finding,
    chance_loss,
    majority,
    median,
    thirds,
)
from zoo.diagnosis.record import Record

ORDER = 10.0  # an order of magnitude
RISE = 0.1  # the validation loss's rise above its best, as a share of the best (the end's median of 3 epochs)
# A model that had memorised its training data at its best epoch: a training accuracy this far above the validation
# accuracy, or (without accuracies) a validation loss this many times the training loss.
GAP_ACCURACY, GAP_LOSS = 0.1, 10.0


def overfitting(record: Record) -> Optional[Finding]:
    """The validation loss turning up from its best (or standing still while the training loss falls tenfold) as
    the training loss keeps falling. A problem when the model
    learnt its training data by heart (a training accuracy 0.1 above the validation one, or a validation loss 10
    times the training loss) already at its best epoch, or by the end with the validation loss up by half."""
    val, train = record.curve("val/loss"), dict(record.curve("train/loss"))
    if len(val) < MIN_EPOCHS + 1 or not train:
        return None
    best_epoch, best = min(val, key=lambda item: item[1])
    last_epoch = val[-1][0]
    last = median([v for _, v in val[-3:]])  # the end, less one epoch's noise
    if best_epoch == last_epoch or best <= 0 or best_epoch not in train or last_epoch not in train:
        return None
    rise, fell = last / best - 1, train[last_epoch] / train[best_epoch]
    # The validation loss turned up, or stood still while the training loss fell by an order of magnitude.
    if fell > 1 - BARELY or (rise < RISE and fell > 1 / ORDER):
        return None
    train_acc, val_acc = dict(record.curve("train/acc")), dict(record.curve("val/acc"))

    def memorised(epoch: int) -> bool:
        if epoch in train_acc and epoch in val_acc:
            return train_acc[epoch] - val_acc[epoch] >= GAP_ACCURACY
        return dict(val)[epoch] >= GAP_LOSS * train[epoch]

    gap = ""
    if last_epoch in train_acc and last_epoch in val_acc:
        gap = (
            f"; accuracy {train_acc[last_epoch]:.3f} on the training data, {val_acc[last_epoch]:.3f} on validation "
            f"(epoch {best_epoch}: {train_acc.get(best_epoch, math.nan):.3f}, {val_acc.get(best_epoch, math.nan):.3f})"
        )
    # Harmful: memorised already at the best epoch (the best checkpoint is overfitted too), or a validation loss
    # up by half while the training data are learnt by heart.
    harmful = fell <= 0.5 and (memorised(best_epoch) or (rise >= 0.5 and memorised(last_epoch)))
    return Finding(
        "overfitting",
        PROBLEM if harmful else WARNING,
        "overfitting",
        f"the validation loss was lowest at epoch {best_epoch} ({best:.3g}) and is {last:.3g} by epoch {last_epoch} "
        f"({rise:+.0%}) while the training loss fell from {train[best_epoch]:.3g} to {train[last_epoch]:.3g}{gap}",
        [REMEDIES["early_stop"], REMEDIES["regularise"], REMEDIES["data_or_smaller"]],
        {"best_epoch": best_epoch, "rise": rise, "train_ratio": fell},
    )


def underfitting(record: Record) -> Optional[Finding]:
    """Losses that stopped falling far above a good fit: a classifier's training accuracy near the majority
    class's share, or (without accuracies) both losses near a guess's."""
    train, val = record.curve("train/loss"), record.curve("val/loss")
    chance = chance_loss(record)
    if len(train) < MIN_EPOCHS or chance is None:
        return None
    ended = [v for _, v in (val or train)]
    middle, last = median(ended[len(ended) // 3 : -len(ended) // 3 or None]), median(thirds(ended)[1])
    flat = last >= (1 - 2 * BARELY) * middle  # the last third of the run gained less than a tenth
    acc, share = record.curve("train/acc"), majority(record)
    if acc and share is not None:
        poor = acc[-1][1] <= share + 0.2 * (1 - share)
    else:
        poor = min(train[-1][1], ended[-1]) >= 0.7 * chance
    if not (flat and poor):
        return None
    evidence = [
        f"the losses stopped falling at {train[-1][1]:.3g} (training) and {ended[-1]:.3g} (validation); a guess "
        f"scores {chance:.3g}"
    ]
    if acc and share is not None:
        evidence.append(f"training accuracy {acc[-1][1]:.3f}, the majority class's share is {share:.3f}")
    dropouts = {
        key: value
        for key in ("model.backbone_kwargs.dropout", "model.head_dropout")
        if isinstance(value := record.setting(key), (int, float)) and value >= 0.5
    }
    if val and val[-1][1] < 0.8 * train[-1][1] and dropouts:
        shown = ", ".join(f"{k.rpartition('.')[2]} {v:g}" for k, v in dropouts.items())
        evidence.append(f"the validation loss is below the training loss: the regularisation ({shown}) holds it back")
    return Finding(
        "underfitting",
        PROBLEM,
        "underfitting",
        "; ".join(evidence),
        [REMEDIES["bigger"], REMEDIES["less_regularisation"], REMEDIES["higher_lr"]],
        {"train_loss": train[-1][1], "val_loss": ended[-1], "chance_loss": chance},
    )


def best_epoch_first(record: Record) -> Optional[Finding]:
    """The best validation loss at the first of several epochs: nothing after it improved."""
    val = record.curve("val/loss")
    if len(val) < MIN_EPOCHS or min(val, key=lambda item: item[1])[0] != val[0][0]:
        return None
    return Finding(
        "best_epoch_first",
        WARNING,
        "the best epoch is the first",
        f"the validation loss was lowest at epoch {val[0][0]} ({val[0][1]:.3g}) of {len(val)}: training did not "
        "improve on it",
        [REMEDIES["lower_lr"], REMEDIES["val_split"]],
        {"epochs": len(val)},
    )


def small_validation(record: Record) -> Optional[Finding]:
    """Too few validation samples to choose the best epoch on."""
    size = record.facts.get("val_samples")
    if not isinstance(size, int) or not 0 < size < MIN_VAL_SAMPLES:
        return None
    return Finding(
        "small_validation",
        WARNING,
        "validation set too small to select on",
        f"{size} validation samples: one sample moves the accuracy by {1 / size:.3f}, and an accuracy near 0.9 has "
        f"a standard error of {math.sqrt(0.09 / size):.3f}; the best epoch is chosen by noise",
        [REMEDIES["val_split"]],
        {"val_samples": size},
    )


def constant_prediction(record: Record) -> Optional[Finding]:
    """One class predicted for every test sample (accuracy and macro F1 of the majority class), or a regressor no
    better than the training mean (R2 near 0)."""
    acc, f1, r2 = record.test.get("test/acc"), record.test.get("test/f1"), record.test.get("test/r2")
    share = majority(record)
    classes = record.hparams.get("num_classes")
    if acc is not None and share is not None:
        f1_constant = record.test.get("baseline/majority/f1")
        if f1_constant is None and isinstance(classes, int) and classes > 1:
            f1_constant = 2 * share / (1 + share) / classes
        if abs(acc - share) <= 0.01 and f1 is not None and f1_constant is not None and f1 <= f1_constant + 0.02:
            return Finding(
                "constant_prediction",
                PROBLEM,
                "constant prediction",
                f"test accuracy {acc:.3f} and macro F1 {f1:.3f} are those of predicting the majority class for "
                f"every sample ({share:.3f}, {f1_constant:.3f})",
                [REMEDIES["labels"], REMEDIES["lower_lr"]],
                {"test_acc": acc, "majority": share},
            )
    if r2 is not None and abs(r2) <= 0.02:
        return Finding(
            "constant_prediction",
            PROBLEM,
            "constant prediction",
            f"test R2 {r2:.3f}: the predictions explain nothing of the targets, as the training mean would",
            [REMEDIES["lower_lr"], REMEDIES["bigger"]],
            {"test_r2": r2},
        )
    return None


def training_stopped(record: Record) -> Optional[Finding]:
    """A fit stopped by a non-finite loss or weights (zoo.callbacks.monitoring.StopOnNonFinite): it diverged."""
    stopped = record.facts.get("stopped")
    if not stopped:
        return None
    said = str(stopped).split(". Try ")[0]  # the message less the hint, which the remedies repeat
    return Finding(
        "training_stopped",
        PROBLEM,
        "training diverged",
        said,
        [REMEDIES["lower_lr"], REMEDIES["clip"], REMEDIES["warmup"], "check the data for NaN or infinite values"],
        {"stopped": str(stopped)},
    )
