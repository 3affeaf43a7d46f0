"""Pictures of a run: learning curves, learning rates per optimizer group, and the confusion matrix.

Shared by `zoo report` (which reads a run's ``metrics.csv``) and the ``RunPictures`` callback (which
collects the same numbers while training), so both draw the same figures. A run's numbers are a
:data:`History`: metric name -> {epoch: value}, with the names Lightning logs (``train/loss_epoch``,
``val/acc``, ``lr-AdamW/head``, ``finetune/trainable_groups``...).

Figures are drawn on matplotlib's Agg canvas without pyplot, so nothing here touches a user's
interactive backend or pyplot's global figure list, and matplotlib is imported only when drawing.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from zoo.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

History = dict[str, dict[float, float]]  # metric name -> {epoch (fractional for step-level values): value}

# Metrics in the data's own units, where lower is better: drawn apart from scores such as acc, f1, r2.
ERROR_METRICS = ("mae", "rmse", "mse", "mape", "smape")
LR_PREFIX = "lr-"
SCHEDULE_KEY = "finetune/trainable_groups"
_DPI = 120


# --- reading a run --------------------------------------------------------------------------------
def read_metrics_csv(path: Union[str, Path]) -> History:
    """A CSVLogger's ``metrics.csv`` as a :data:`History`.

    Epoch-level values are keyed by their epoch. The LearningRateMonitor's rows carry a step but no
    epoch; they are placed by step within the epochs' step ranges (epoch ``e`` exactly at its start,
    fractions of an epoch for per-step LRs).

    Raises:
        DataError: the file has no rows of values.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or all(not any(v for k, v in row.items() if k not in ("epoch", "step")) for row in rows):
        raise DataError(f"{path} has no logged values: the run stopped before logging anything")
    history: History = {}
    ends: dict[int, int] = {}  # epoch -> its last step, from the rows of training and validation values
    stepped: list[tuple[int, dict[str, str]]] = []
    for row in rows:
        values = {k: v for k, v in row.items() if k not in ("epoch", "step") and v not in (None, "")}
        step = int(float(row["step"])) if row.get("step") else None
        if row.get("epoch") in (None, ""):
            if step is not None:
                stepped.append((step, values))
            continue
        epoch = int(float(row["epoch"]))
        for name, value in values.items():
            history.setdefault(name, {})[float(epoch)] = float(value)
        if step is not None and any(k.startswith(("train/", "val/")) for k in values):
            ends[epoch] = max(ends.get(epoch, step), step)
    for step, values in stepped:
        x = _epoch_of_step(step, ends)
        for name, value in values.items():
            history.setdefault(name, {})[x] = float(value)
    return history


def _epoch_of_step(step: int, ends: dict[int, int]) -> float:
    """Where a global step falls on the epoch axis: ``e + fraction`` of epoch ``e``'s steps."""
    start = 0
    for epoch in sorted(ends):
        if step <= ends[epoch]:
            return epoch + (step - start) / max(1, ends[epoch] - start + 1)
        start = ends[epoch] + 1
    return float(max(ends) + 1) if ends else 0.0  # logged at the start of an epoch that logged nothing else


def best_epoch(history: History, checkpoint_names: Sequence[str] = (), monitor: str = "val/loss") -> Optional[int]:
    """The epoch of the best checkpoint: from a ``best-epoch=N-...`` file name when there is exactly one
    (the checkpoint callback's own choice, whatever it monitored), else the epoch of the lowest ``monitor``."""
    found = {int(m.group(1)) for name in checkpoint_names if (m := re.match(r"best-epoch=(\d+)", Path(name).name))}
    if len(found) == 1:
        return found.pop()
    values = history.get(monitor) or {}
    candidates = {e: v for e, v in values.items() if not found or int(e) in found}
    return int(min(candidates, key=candidates.__getitem__)) if candidates else None


def epochs_of(history: History) -> list[float]:
    """The epochs with a training or validation value."""
    return sorted({e for name, v in history.items() if name.startswith(("train/", "val/")) for e in v})


# --- drawing ----------------------------------------------------------------------------------------
def new_figure(
    width: float,
    height: float,
    nrows: int = 1,
    ncols: int = 1,
    sharex: bool = False,
    height_ratios: Optional[Sequence[float]] = None,
) -> tuple[Figure, list]:
    """A Figure on an Agg canvas (no pyplot) and its axes (a grid as ``Figure.subplots`` makes), flattened."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, height_ratios=height_ratios, squeeze=False)
    return fig, list(axes.flat)


def figure_to_array(fig: Figure) -> np.ndarray:
    """The drawn figure as an ``(H, W, 3)`` uint8 array, e.g. for ``wandb.Image``."""
    import numpy as np

    fig.canvas.draw()
    # new_figure's canvas is Agg's; Figure.canvas is typed as the base class, which has no buffer_rgba.
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]


def _series(history: History, name: str) -> tuple[list[float], list[float]]:
    points = sorted((history.get(name) or {}).items())
    return [p[0] for p in points], [p[1] for p in points]


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_learning_curves(
    history: History, path: Optional[Union[str, Path]] = None, best: Optional[int] = None, title: str = ""
) -> Figure:
    """Training and validation loss per epoch, then the other metrics: scores (acc, f1, auroc, r2...) and
    errors in the data's units (mae, rmse...) in panels of their own. Training is dashed, validation solid;
    the best epoch is marked in every panel and the test metrics are in the title. Saved to ``path``.

    Raises:
        DataError: no training or validation values to draw.
    """
    if not epochs_of(history):
        raise DataError("no training or validation metrics per epoch to draw (did the run finish an epoch?)")
    loss_key = "train/loss_epoch" if "train/loss_epoch" in history else "train/loss"
    kinds: dict[str, list[str]] = {"score": [], "error": []}
    for name in sorted({k.split("/", 1)[1] for k in history if k.startswith(("train/", "val/"))}):
        if "loss" not in name and not name.endswith("_step"):
            kinds["error" if name.split("_")[0] in ERROR_METRICS else "score"].append(name)
    panels = ["loss"] + [k for k in ("score", "error") if kinds[k]]
    fig, axes = new_figure(5.0 * len(panels), 4.2, ncols=len(panels))

    loss_ax = axes[0]
    losses: list[float] = []
    for key, label, style, color in ((loss_key, "train", "--", "C0"), ("val/loss", "val", "-", "C1")):
        if key in history:
            xs, ys = _series(history, key)
            loss_ax.plot(xs, ys, style, marker=".", color=color, label=label)
            losses += ys
    loss_ax.set(title="loss", xlabel="epoch", ylabel="loss")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
        loss_ax.set_yscale("log")  # a first epoch's loss 100x the last would flatten every later difference
    for ax, kind in zip(axes[1:], panels[1:]):
        # One colour per metric (none of the loss panel's train / val colours): validation solid, training
        # dashed and lighter, since the validation curve is the one that says how the model does.
        for metric_color, name in zip(_colors(len(kinds[kind]) + 2)[2:], kinds[kind]):
            for stage, style, alpha in (("train", "--", 0.55), ("val", "-", 1.0)):
                if f"{stage}/{name}" in history:
                    xs, ys = _series(history, f"{stage}/{name}")
                    ax.plot(
                        xs,
                        ys,
                        style,
                        marker="." if stage == "val" else None,
                        color=metric_color,
                        alpha=alpha,
                        label=f"{stage}/{name}",
                    )
        ax.set(
            title="scores (higher is better)" if kind == "score" else "errors (data units, lower is better)",
            xlabel="epoch",
        )
    if best is not None:
        for ax in axes:  # named once, in the loss panel's legend
            best_label = f"best epoch ({best})" if ax is loss_ax else None
            ax.axvline(best, color="0.4", linestyle=":", linewidth=1.2, label=best_label)
        if best in history.get("val/loss", {}):
            loss_ax.plot([best], [history["val/loss"][best]], "o", color="C1", markersize=8, markerfacecolor="none")
    for ax in axes:
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    tests = {k.split("/", 1)[1]: v[max(v)] for k, v in history.items() if k.startswith("test/") and v}
    suptitle = title
    if tests:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(tests.items()))
        suptitle = f"{title}\ntest: {shown}" if title else f"test: {shown}"
    if suptitle:
        fig.suptitle(suptitle)
    if path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def lr_columns(history: History) -> list[str]:
    """The LearningRateMonitor's columns (``lr-<Optimizer>/<group>``), in logged order of groups."""
    return [k for k in history if k.startswith(LR_PREFIX) and not k.endswith(("-momentum", "-beta1"))]


def plot_learning_rates(
    history: History, path: Optional[Union[str, Path]] = None, title: str = "", group_order: Sequence[str] = ()
) -> Optional[Figure]:
    """The learning rate of every optimizer group per epoch on a log scale, one line per layer group
    (coloured stem to top); a ``.no_decay`` group is merged into its layer group's line when their LRs are
    equal, else drawn dashed in the same colour. Below it, the fine-tuning schedule (number of trainable
    backbone groups) when the run had one. Saved to ``path``; None when the run logged no LR.

    Args:
        group_order: the optimizer's group names, stem to top (``metrics.csv`` sorts its columns by name);
            without it, the logged order with the head last.
    """
    from zoo.tasks.base import NO_DECAY  # the task names the groups (imported here: plots stay light to import)

    order = {name: i for i, name in enumerate(group_order)}
    logged = lr_columns(history)
    columns = sorted(
        logged,
        key=lambda c: (
            order.get(c.split("/", 1)[-1], len(order)),
            c.split("/", 1)[-1].startswith("head"),
            logged.index(c),
        ),
    )
    if not columns:
        return None
    prefixes = {c.split("/", 1)[0] for c in columns}
    layer_groups: dict[str, list[str]] = {}  # layer group -> its columns (decay first)
    for column in columns:
        layer_groups.setdefault(column.removesuffix(NO_DECAY), []).append(column)
    has_schedule = SCHEDULE_KEY in history
    fig, axes = new_figure(
        9.0,
        6.0 if has_schedule else 4.5,
        nrows=2 if has_schedule else 1,
        sharex=True,
        height_ratios=[3, 1] if has_schedule else None,
    )
    ax = axes[0]

    def label_of(column: str) -> str:  # the optimizer's name is in the axis label when there is one optimizer
        return column.split("/", 1)[1] if len(prefixes) == 1 and "/" in column else column

    hidden_zero = False
    for color, (base, group_columns) in zip(_colors(len(layer_groups), ordered=True), layer_groups.items()):
        first = _series(history, group_columns[0])
        same = all(_series(history, c) == first for c in group_columns[1:])
        for i, column in enumerate(group_columns[:1] if same else group_columns):
            xs, ys = _series(history, column)
            hidden_zero |= any(y <= 0 for y in ys)
            ys = [y if y > 0 else math.nan for y in ys]  # a zero LR (a frozen group) has no place on a log axis
            ax.plot(
                xs,
                ys,
                "--" if i else "-",
                marker="." if len(xs) < 40 else None,
                color=color,
                label=label_of(base if same else column),
                linewidth=1.6,
            )
    ax.set_yscale("log")
    ylabel = "learning rate" + (f" ({next(iter(prefixes))[len(LR_PREFIX) :]})" if len(prefixes) == 1 else "")
    ax.set(ylabel=ylabel, title="learning rate per optimizer group" + (" (zeros not shown)" if hidden_zero else ""))
    all_equal = len({tuple(_series(history, c)[1]) for c in columns}) == 1
    if all_equal and len(layer_groups) > 1:
        ax.text(
            0.01,
            0.02,
            f"all {len(layer_groups)} groups share one LR",
            transform=ax.transAxes,
            fontsize="small",
            color="0.3",
        )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group", title_fontsize="small")
    if has_schedule:
        sched = axes[1]
        xs, ys = _series(history, SCHEDULE_KEY)
        sched.step(xs, ys, where="post", color="C2", marker=".")
        sched.set(ylabel="trainable\nbackbone groups", ylim=(0, max(len(layer_groups), max(ys, default=0)) + 0.5))
        sched.grid(alpha=0.3)
        _integer_epochs(sched)
        sched.yaxis.get_major_locator().set_params(integer=True)
    axes[-1].set_xlabel("epoch")
    _integer_epochs(axes[-1])
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: Optional[Union[str, Path]] = None,
    title: str = "test confusion matrix",
) -> Figure:
    """Counts (rows: true class, columns: predicted), shaded by the fraction of each true class, so a
    rare class's mistakes show as clearly as a common one's. Counts are written in the cells up to 30
    classes; long class names are shortened. Saved to ``path``."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    if counts.shape != (n, n) or len(class_names) != n:
        raise DataError(f"a confusion matrix of shape {counts.shape} does not fit {len(class_names)} class names")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    names = [_shorten(str(c)) for c in class_names]
    longest = max((len(c) for c in names), default=1)
    side = min(16.0, max(4.5, 0.42 * n + 0.07 * longest + 2.5))
    fig, (ax,) = new_figure(side + 1.2, side)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    font = 9 if n <= 15 else 7 if n <= 30 else 5
    ticks = np.arange(n) if n <= 100 else np.arange(0, n, math.ceil(n / 100))
    ax.set_xticks(
        ticks,
        [names[i] for i in ticks],
        fontsize=font,
        rotation=45 if longest > 2 else 0,
        ha="right" if longest > 2 else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=font)
    ax.set(xlabel="predicted class", ylabel="true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j] or i == j:
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if shares[i, j] > 0.55 else "black",
                    )
    total, correct = int(counts.sum()), int(np.trace(counts))
    accuracy = correct / total if total else float("nan")
    ax.set_title(f"{title}\naccuracy {accuracy:.4f} ({correct}/{total})", fontsize=12 if n <= 30 else 16)
    if path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def plot_samples(images: Sequence[np.ndarray], titles: Sequence[str], wrong: Sequence[bool]) -> Figure:
    """A row of input images with their "true -> predicted" titles, mistakes in red (for W&B)."""
    import numpy as np

    count = max(1, len(images))
    fig, axes = new_figure(1.6 * count, 2.2, ncols=count)
    fig.suptitle("true \u2192 predicted (mistakes in red)", fontsize=9)
    for ax, image, text, bad in zip(axes, images, titles, wrong):
        pixels = np.asarray(image, dtype=float)
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)  # inputs are standardised
        ax.imshow(pixels, cmap=None if pixels.ndim == 3 else "gray")
        ax.set_title(text, fontsize=8, color="red" if bad else "black")
        ax.set_axis_off()
    return fig


def _colors(n: int, ordered: bool = False) -> list[tuple[float, ...]]:
    """``n`` distinct colours; ``ordered`` ones run dark to light (for layer groups, stem to top)."""
    from matplotlib import colormaps

    if n <= 10 and not ordered:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(1, n - 1) * 0.9) for i in range(n)]


def _shorten(name: str, limit: int = 18) -> str:
    """Long class names lose their middle: beginnings and endings are what tell them apart."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "\u2026" + name[-(limit - 1 - head) :]
