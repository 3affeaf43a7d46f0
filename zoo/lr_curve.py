"""Reading an LR range test's loss curve: smoothed without lag, the suggested LR, and the picture of both.

Pure functions of the recorded LRs and losses (`zoo lr-find` records them, :mod:`zoo.commands.lr_find`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

DPI = 120


def smooth(losses: list[float], fraction: float = 0.05) -> list[float]:
    """The loss curve smoothed without lag: a bias-corrected exponential moving average over about
    ``fraction`` of the steps, run forward and then backward.

    Lightning's curve is the forward average alone with beta 0.98, which trails the loss by about 50
    steps, half of a usual sweep: its steepest fall then sits where the loss per step is already at its
    lowest, one step from diverging. Run both ways, the average is centred on each step. NaN from the
    first non-finite loss on (the run diverged there).
    """
    cut = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    span = max(1.0, fraction * len(losses))
    beta = span / (span + 1.0)
    forward = _average(losses[:cut], beta)
    return _average(forward[::-1], beta)[::-1] + [math.nan] * (len(losses) - cut)


def _average(values: list[float], beta: float) -> list[float]:
    out, average = [], 0.0
    for step, value in enumerate(values):
        average = beta * average + (1.0 - beta) * value
        out.append(average / (1.0 - beta ** (step + 1)))
    return out


def suggestion_index(
    lrs: list[float], losses: list[float], log_x: bool, skip_begin: int = 10, skip_end: int = 1
) -> Optional[int]:
    """Where the smoothed loss falls fastest on its way down to its lowest point.

    Lightning's ``suggestion()`` with the same skipped steps, but: the slope is taken against log10(LR)
    when the LRs grow exponentially (Lightning 2.6 takes it against the LR itself, where the smallest LRs
    lie so close together that any wobble there is the steepest: Lightning issue #21141), and only up to
    the lowest loss, since a loss that bounces while diverging falls steeply too. None when fewer than
    two points remain, i.e. the loss diverged early or never fell.
    """
    import torch

    kept = [i for i in range(skip_begin, len(lrs) - skip_end) if math.isfinite(losses[i])]
    if len(kept) < 2:
        return None
    x = torch.tensor([math.log10(lrs[i]) if log_x else lrs[i] for i in kept], dtype=torch.float64)
    slopes = torch.gradient(torch.tensor([losses[i] for i in kept], dtype=torch.float64), spacing=[x])[0]
    lowest = min(range(len(kept)), key=lambda k: losses[kept[k]])
    if lowest == 0:
        return None
    steepest = int(torch.argmin(slopes[:lowest]))  # strictly before the lowest loss
    return kept[steepest] if slopes[steepest] < 0 else None


def finite_or_none(values: list[float]) -> list[Optional[float]]:
    """``values`` with None for NaN and infinities, which JSON has not."""
    return [v if math.isfinite(v) else None for v in values]


def plot_lr_find(
    lrs: list[float],
    losses: list[float],
    raw: list[float],
    at: Optional[int],
    path: Path,
    log_x: bool = True,
    span: Optional[tuple[float, float]] = None,
    stopped_early: bool = False,
    title: str = "",
) -> None:
    """The training loss against the LR: each step's loss faint, the smoothed curve over it, the suggestion
    (index ``at``) marked with a dot and a vertical line, and where the sweep stopped if the loss diverged.
    The LR axis is the whole planned ``span``; the loss axis ends a little above the loss at the start,
    so a diverging tail does not flatten the part that matters."""
    from zoo.plots import new_figure

    fig, (ax,) = new_figure(7.0, 4.5)
    marker = "." if len(lrs) < 40 else None
    if raw:
        ax.plot(lrs, raw, "-", marker=marker, color="C0", alpha=0.3, linewidth=0.8, label="loss per step")
    ax.plot(lrs, losses, "-", marker=marker, color="C0", linewidth=1.8, label="smoothed loss")
    if at is not None:
        ax.axvline(lrs[at], color="C3", linestyle="--", linewidth=1.2)
        ax.plot([lrs[at]], [losses[at]], "o", color="C3", markersize=8, label=f"suggested lr = {lrs[at]:.3g}")
    else:
        why = "the loss diverged too early" if stopped_early else "the loss never fell"
        ax.text(
            0.5,
            0.92,
            f"no suggestion: {why}",
            transform=ax.transAxes,
            ha="center",
            va="top",
            color="C3",
            fontsize="large",
            bbox={"facecolor": "white", "edgecolor": "C3", "alpha": 0.9},
        )
    if stopped_early and lrs:
        ax.axvline(lrs[-1], color="0.4", linestyle=":", linewidth=1.2, label=f"diverged, stopped at {lrs[-1]:.3g}")
    if log_x:
        ax.set_xscale("log")
    if span is not None:
        ax.set_xlim(*span)
    ys = [y for y in losses if math.isfinite(y)]
    seen = ys + [y for y in raw if math.isfinite(y)]
    if len(ys) > 2:
        low, start = min(seen), max(ys[: max(3, len(ys) // 10)])
        top = start + 0.3 * max(start - low, 0.05 * abs(start), 1e-12)
        ax.set_ylim(low - 0.05 * (top - low), top)
    elif seen and min(seen) > 0 and max(seen) / min(seen) > 30:
        ax.set_yscale("log")
    ax.set(xlabel="learning rate" + (" (log scale)" if log_x else ""), ylabel="training loss")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor", axis="x")
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.savefig(path, dpi=DPI)
