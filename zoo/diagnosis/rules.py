"""The rules of the diagnosis: each a small pure function from a :class:`~zoo.diagnosis.record.Record` to a
:class:`~zoo.diagnosis.findings.Finding` or None, and which finding explains which. Here the rules that read the
layers (gradients, activations, the step size); :mod:`zoo.diagnosis.curves` holds those of the curves and results.

Thresholds are ratios and orders of magnitude, never values tuned to one model: a gradient 1,000 times smaller
in the first layers than in the last, weights that change by a tenth in one step, a loss no better than the
uniform guess (ln of the number of classes). Each finding carries its evidence (the numbers, the layers, the
epochs) and the usual remedies.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from zoo.diagnosis.curves import (
    best_epoch_first,
    constant_prediction,
    overfitting,
    small_validation,
    training_stopped,
    underfitting,
)
from zoo.diagnosis.findings import (
    BARELY,
    MIN_EPOCHS,
    MIN_STEPS,
    PROBLEM,
    REMEDIES,
    WARNING,
    Finding,
    chance_loss,
    epochs_text,
    grad_norms,
    largest_update,
    layer_medians,
    listed,
    losses,
    median,
    thirds,
)
from zoo.diagnosis.record import ACTIVATION, Record

ORDERS_PROBLEM, ORDERS_WARNING = 1e-3, 1e-2  # first layers' gradients against the last layers': 3 / 2 orders
GROWTH = 100.0  # two orders of magnitude: gradient norms over training, activation scale through the layers
SPIKE, SPIKE_WINDOW = 100.0, 10  # a gradient norm this many times the median of the 10 logged before it
UPDATE_HIGH, UPDATE_LOW = 0.1, 1e-4  # a step's change of a layer's weights over their norm; ~1e-3 is healthy
DEAD_PROBLEM, DEAD_WARNING = 0.5, 0.25  # the share of a layer's units that never fire (warning: if they died)
SATURATED_PROBLEM, SATURATED_WARNING = 0.5, 0.2  # the share of a sigmoid / tanh layer's outputs in its flat tails


# --- gradients ------------------------------------------------------------------------------------------------
def vanishing_gradients(record: Record) -> Optional[Finding]:
    """The first layers' gradient norms orders of magnitude below the last layers' (medians over the run)."""
    layers = layer_medians(record, "grad_norm")
    if len(layers) < 3:
        return None
    first, last = thirds(layers)
    low, high = median([v for _, v in first]), median([v for _, v in last])
    if not high > 0 or low / high > ORDERS_WARNING:
        return None
    ratio = low / high
    severity = PROBLEM if ratio <= ORDERS_PROBLEM else WARNING
    start, end = first[0][0].spans("grad_norm")[0], last[-1][0].spans("grad_norm")[1]
    return Finding(
        "vanishing_gradients",
        severity,
        "vanishing gradients",
        f"the first layers' gradient norms ({listed([f'{layer.name} {v:.2g}' for layer, v in first])}) are "
        + (f"{ratio:.1g} times" if ratio > 0 else "nothing next to")
        + f" the last layers' ({listed([f'{layer.name} {v:.2g}' for layer, v in last])}), medians over "
        f"{epochs_text(start, end)}: the first layers hardly learn",
        [REMEDIES["init"], REMEDIES["norm"], REMEDIES["residual"], REMEDIES["relu"]],
        {"ratio": ratio, "first": {layer.name: v for layer, v in first}, "last": {layer.name: v for layer, v in last}},
    )


def exploding_gradients(record: Record) -> Optional[Finding]:
    """Gradient norms that clipping cuts on most steps, that grow by orders of magnitude over training, that are
    not finite, or that spike; activations whose scale grows by orders of magnitude through the layers."""
    norms = grad_norms(record)
    values = [v for _, v in norms]
    if not values:
        return None
    evidence: list[str] = []
    numbers: dict[str, float] = {}
    severity = WARNING
    bad = [step for step, v in norms if not math.isfinite(v)]
    if bad:
        evidence.append(f"the gradient norm is not finite at step {bad[0]}")
        severity, numbers["non_finite_steps"] = PROBLEM, len(bad)
    finite = [v for v in values if math.isfinite(v)]
    clip = record.setting("trainer.gradient_clip_val")
    by_norm = record.setting("trainer.gradient_clip_algorithm") in (None, "norm")
    if isinstance(clip, (int, float)) and clip > 0 and by_norm and finite:
        clipped = sum(v > clip for v in finite) / len(finite)
        if clipped >= 0.5:
            evidence.append(
                f"clipping at {clip:g} cut the gradient on {clipped:.0%} of the logged steps (median norm "
                f"{median(finite):.3g}, {median(finite) / clip:.3g} times the threshold)"
            )
            severity, numbers["clipped_fraction"] = PROBLEM, clipped
    steady = grad_norms(record, steady=True)  # growth and spikes: the layers trained throughout
    finite = [v for _, v in steady if math.isfinite(v)]
    norms = [(step, v) for step, v in steady if math.isfinite(v)]
    if len(finite) >= MIN_STEPS:
        early, late = thirds(finite)
        growth = median(late) / median(early) if median(early) > 0 else math.inf
        if growth >= GROWTH:
            evidence.append(f"the gradient norm grew {growth:.3g} times from the first third of training to the last")
            severity, numbers["growth"] = PROBLEM, growth
        spikes = [
            (norms[i][0], v, v / median(finite[max(0, i - SPIKE_WINDOW) : i]))
            for i, v in enumerate(finite)
            if i >= SPIKE_WINDOW // 2 and v >= SPIKE * median(finite[max(0, i - SPIKE_WINDOW) : i])
        ]
        if spikes:
            step, value, times = max(spikes, key=lambda spike: spike[2])
            evidence.append(
                f"{len(spikes)} spike(s), the largest at step {step}: {value:.3g}, {times:.3g} times the norms of "
                "the steps logged before it"
            )
            numbers["spikes"] = len(spikes)
    scales = layer_medians(record, "act_std")
    if len(scales) >= 3 and scales[0][1] > 0:
        (top, scale), (bottom, base) = max(scales, key=lambda item: item[1]), scales[0]
        if scale / base >= GROWTH * 10:
            evidence.append(
                f"the activations' scale grows through the layers: std {base:.3g} after {bottom.name}, "
                f"{scale:.3g} after {top.name}"
            )
            severity, numbers["activation_growth"] = PROBLEM, scale / base
    if not evidence:
        return None
    return Finding(
        "exploding_gradients",
        severity,
        "exploding gradients",
        "; ".join(evidence),
        [REMEDIES["init"], REMEDIES["norm"], REMEDIES["clip"], REMEDIES["lower_lr"]],
        numbers,
    )


# --- activations ----------------------------------------------------------------------------------------------
def saturated_units(record: Record) -> Optional[Finding]:
    """Sigmoid / tanh layers whose outputs sit in their flat tails (median share over the run)."""
    layers = [
        (layer, v) for layer, v in layer_medians(record, "saturated_fraction", ACTIVATION) if v >= SATURATED_WARNING
    ]
    if not layers:
        return None
    worst = max(v for _, v in layers)
    start, end = layers[0][0].spans("saturated_fraction")
    return Finding(
        "saturated_units",
        PROBLEM if worst >= SATURATED_PROBLEM else WARNING,
        "saturated sigmoid / tanh units",
        f"{listed([f'{v:.0%} of {layer.name} outputs' for layer, v in layers])} are saturated (sigmoid < 0.02 or > 0.98, "
        f"|tanh| > 0.98) on the fixed validation batch, median over {epochs_text(start, end)}: there the "
        "activation's slope, and the gradient through it, is near 0",
        [REMEDIES["init"], REMEDIES["norm"], REMEDIES["relu"]],
        {"layers": {layer.name: v for layer, v in layers}},
    )


def dead_relus(record: Record) -> Optional[Finding]:
    """ReLU-family layers whose units never fire on the fixed batch at the end of training (the last third of the
    run): half of a layer's units or more, or a quarter or more where their share at least doubled during
    training (units that died; a dense layer over ReLU outputs may start with a quarter never firing, and learn)."""
    found = []
    for layer in record.layers:
        values = layer.values("dead_fraction")
        if layer.kind != ACTIVATION or not values:
            continue
        start, end = (median(part) for part in thirds(values))
        if end >= DEAD_PROBLEM or (end >= DEAD_WARNING and end >= 2 * start):
            found.append((layer, end, start))
    if not found:
        return None
    worst = max(v for _, v, _ in found)
    return Finding(
        "dead_relus",
        PROBLEM if worst >= DEAD_PROBLEM else WARNING,
        "dead ReLUs",
        f"{listed([f'{end:.0%} of the units of {layer.name} ({start:.0%} at the start)' for layer, end, start in found])} "
        "never fire on the fixed validation batch at the end of training: they pass no gradient back and stay dead",
        [REMEDIES["lower_lr"], REMEDIES["leaky"], REMEDIES["init"], REMEDIES["norm"]],
        {"layers": {layer.name: end for layer, end, _ in found}},
    )


# --- the learning rate ----------------------------------------------------------------------------------------
def loss_going_wrong(record: Record) -> list[str]:
    """Signs in the training loss that steps overshoot: not finite, rising from the start, ending no better than
    a guess, or spiking to ten times a guess's loss (an epoch's mean counts: it holds the steps between logging
    steps)."""
    values = losses(record)
    if len(values) < MIN_EPOCHS:
        return []
    peak = max([v for v in values if math.isfinite(v)] + [v for _, v in record.curve("train/loss")], default=0.0)
    signs = []
    if any(not math.isfinite(v) for v in values):
        signs.append("the training loss became infinite or NaN")
    finite = [v for v in values if math.isfinite(v)]
    early, late = thirds(finite)
    if median(late) > median(early) * (1 + BARELY):
        signs.append(f"the training loss rose from {median(early):.3g} to {median(late):.3g} over the run")
    chance = chance_loss(record)
    if chance is not None:
        if median(late) >= chance:
            signs.append(f"the training loss ends at {median(late):.3g}, no better than a guess's ({chance:.3g})")
        if peak >= 10 * chance:
            signs.append(f"it jumped to {peak:.3g} on the way, {peak / chance:.3g} times a guess's")
    return signs


def lr_too_high(record: Record) -> Optional[Finding]:
    """The loss rising, oscillating or diverging from the start, with steps that change a quarter of the layers'
    weights by a tenth or more (where the layers were recorded; without them the loss alone tells)."""
    signs, update = loss_going_wrong(record), largest_update(record, share=0.25)
    big = update is not None and update[1] >= UPDATE_HIGH
    if update is not None and not big:
        return None  # small steps: whatever went wrong, it is not the step size
    if not signs and not big:
        return None
    lr = record.setting("model.optimizer.lr")
    evidence = list(signs)
    if big:
        assert update is not None
        evidence.append(
            f"a step changes the weights of a quarter of the layers by {update[1]:.2g} of their norm or more (median "
            f"over the run, e.g. {update[0].name}; about 1e-3 is healthy)"
        )
    if lr is not None:
        evidence.append(f"the learning rate is {lr:g}")
    return Finding(
        "lr_too_high",
        PROBLEM if signs else WARNING,
        "learning rate too high",
        "; ".join(evidence),
        [REMEDIES["lower_lr"], REMEDIES["warmup"], REMEDIES["clip"]],
        {"update_ratio": update[1] if update else None, "lr": lr},
    )


def lr_too_low(record: Record) -> Optional[Finding]:
    """The loss barely moving over the run while each step changes the weights by less than 1e-4 of them."""
    values, update = losses(record), largest_update(record)
    if len(values) < MIN_EPOCHS or (update is not None and update[1] >= UPDATE_LOW):
        return None
    early, late = thirds(values)
    moved = (median(early) - median(late)) / median(early) if median(early) > 0 else 1.0
    train_acc = record.curve("train/acc")
    if moved >= BARELY or (train_acc and train_acc[-1][1] >= 0.9):
        return None
    lr = record.setting("model.optimizer.lr")
    steps = (
        f"; no layer's weights change by more than {update[1]:.2g} of their norm in a step ({update[0].name}; "
        "about 1e-3 is healthy)"
        if update
        else ""
    )
    return Finding(
        "lr_too_low",
        PROBLEM if update is not None else WARNING,
        "learning rate too low",
        f"the training loss moved by {moved:.1%} over the run ({median(early):.3g} to {median(late):.3g}){steps}"
        + (f"; the learning rate is {lr:g}" if lr is not None else ""),
        [REMEDIES["higher_lr"]],
        {"moved": moved, "update_ratio": update[1] if update else None, "lr": lr},
    )


RULES: tuple[Callable[[Record], Optional[Finding]], ...] = (
    training_stopped,
    lr_too_high,
    lr_too_low,
    exploding_gradients,
    vanishing_gradients,
    dead_relus,
    saturated_units,
    overfitting,
    underfitting,
    best_epoch_first,
    small_validation,
    constant_prediction,
)
# A finding that another explains: its severity becomes info, and it names its cause. A learning rate too high
# kills ReLUs and scatters the loss; dead or saturated units stop the gradient and the learning; ...
EXPLAINED_BY = {
    "dead_relus": ("lr_too_high",),
    "saturated_units": ("lr_too_high", "exploding_gradients"),
    "vanishing_gradients": ("dead_relus", "saturated_units", "lr_too_high"),
    "exploding_gradients": ("lr_too_high",),
    "lr_too_low": ("dead_relus", "saturated_units", "vanishing_gradients"),
    "underfitting": (
        "lr_too_low",
        "dead_relus",
        "saturated_units",
        "vanishing_gradients",
        "lr_too_high",
        "exploding_gradients",
    ),
    "constant_prediction": ("dead_relus", "saturated_units", "vanishing_gradients", "lr_too_high", "underfitting"),
    "best_epoch_first": ("lr_too_high", "overfitting", "small_validation", "underfitting", "lr_too_low"),
}
