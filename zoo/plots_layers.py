"""Per-layer heat maps over training: gradient norms, update-to-weight ratios and activation statistics, from
the ``layer_stats.csv`` a run's layer-statistics callback writes into its folder.

One row of the file is one layer's statistics at one logging step::

    step,epoch,layer,kind,grad_norm,update_ratio,act_mean,act_std,dead_fraction,saturated_fraction

``kind`` is ``param`` (a parameter tensor: ``grad_norm``, ``update_ratio``) or ``activation`` (a module's output
on a fixed validation batch: ``act_*``, ``dead_fraction``, ``saturated_fraction``); a cell is empty where a
statistic does not apply, and rows come in the forward order of the layers. Each heat map has the layers top
(input) to bottom (output) and the logging steps left to right: vanishing gradients are dark top rows, dead
or saturated units bright rows.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from zoo.diagnosis.record import LAYER_STATS_COLUMNS
from zoo.errors import DataError
from zoo.plots import new_figure

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Panel:
    """One heat map: a statistic of the rows of one kind, its title and colour scale."""

    kind: str
    column: str
    title: str
    scale: str  # "log" (norms and ratios span orders of magnitude), "fraction" (0 to 1) or "linear"
    cmap: str


PANELS = (
    Panel("param", "grad_norm", "gradient norm", "log", "viridis"),
    Panel("param", "update_ratio", "update / weight ratio", "log", "viridis"),
    Panel("activation", "act_mean", "activation mean", "linear", "coolwarm"),
    Panel("activation", "act_std", "activation std", "log", "viridis"),
    Panel("activation", "dead_fraction", "fraction of dead units", "fraction", "magma"),
    Panel("activation", "saturated_fraction", "fraction of saturated units", "fraction", "magma"),
)


@dataclass
class HeatMap:
    """A statistic per layer (rows, forward order) and logging step (columns); NaN where nothing was recorded."""

    layers: list[str]
    steps: list[int]
    epochs: list[int]  # the epoch of each step
    values: np.ndarray  # (len(layers), len(steps))


def read_layer_stats(path: Union[str, Path]) -> dict[str, HeatMap]:
    """The heat maps of a ``layer_stats.csv``: panel column -> :class:`HeatMap`, for the statistics it has values of.

    Raises:
        DataError: the file lacks one of :data:`LAYER_STATS_COLUMNS`, or a row's number is not a number.
    """
    import numpy as np

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in LAYER_STATS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: no column {', '.join(missing)}; a layer statistics file has the columns "
                f"{','.join(LAYER_STATS_COLUMNS)}"
            )
        rows = list(reader)
    maps = {}
    for panel in PANELS:
        layers: dict[str, int] = {}  # first seen order is the forward order
        steps: dict[int, int] = {}
        cells: dict[tuple[str, int], float] = {}
        for line, row in enumerate(rows, start=2):
            if row["kind"] != panel.kind or row.get(panel.column) in (None, ""):
                continue
            try:
                step, epoch, value = int(float(row["step"])), int(float(row["epoch"] or 0)), float(row[panel.column])
            except ValueError:
                raise DataError(f"{path}, line {line}: not a number in {row}") from None
            layers.setdefault(row["layer"], len(layers))
            steps.setdefault(step, epoch)
            cells[(row["layer"], step)] = value
        if not cells:
            continue
        ordered = sorted(steps)
        values = np.full((len(layers), len(ordered)), np.nan)
        column_of = {s: j for j, s in enumerate(ordered)}
        for (layer, step), value in cells.items():
            values[layers[layer], column_of[step]] = value
        maps[panel.column] = HeatMap(list(layers), ordered, [steps[s] for s in ordered], values)
    return maps


def plot_layer_stats(
    source: Union[str, Path, dict[str, HeatMap]], path: Optional[Union[str, Path]] = None, title: str = ""
) -> Optional[Figure]:
    """Heat maps of each statistic the file has, per layer over training: the parameters' on the left, the
    activations' on the right. Epoch boundaries are dotted lines. Saved to ``path``; None when the file has no
    values."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    maps = read_layer_stats(source) if isinstance(source, (str, Path)) else source
    panels = [p for p in PANELS if p.column in maps]
    if not panels:
        return None
    columns = {kind: [p for p in panels if p.kind == kind] for kind in ("param", "activation")}
    ncols = sum(1 for c in columns.values() if c)
    nrows = max(len(c) for c in columns.values())
    most_layers = max(len(m.layers) for m in maps.values())
    cell_height = min(9.0, max(2.4, 0.16 * most_layers + 1.2))
    fig, axes = new_figure(7.0 * ncols, cell_height * nrows + 0.4, nrows=nrows, ncols=ncols)
    grid = [axes[r * ncols : (r + 1) * ncols] for r in range(nrows)]
    used = set()
    for c, kind_panels in enumerate(c for c in columns.values() if c):
        for r, panel in enumerate(kind_panels):
            ax = grid[r][c]
            used.add(id(ax))
            heat = maps[panel.column]
            values = np.ma.masked_invalid(heat.values)
            finite = heat.values[np.isfinite(heat.values)]
            if panel.scale == "log":
                positive = finite[finite > 0]
                low, high = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
                norm: Normalize = LogNorm(vmin=low, vmax=max(high, low * 10))
                values = np.ma.masked_where(
                    ~(heat.values > 0), heat.values
                )  # zero / negative: no colour on a log scale
            elif panel.scale == "fraction":
                norm = Normalize(vmin=0.0, vmax=1.0)
            else:
                bound = float(np.abs(finite).max()) if finite.size else 1.0
                norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound or -1.0, vmax=bound or 1.0)
            image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=panel.cmap, norm=norm)
            fig.colorbar(image, ax=ax, shrink=0.9)
            _axes_of(ax, heat)
            ax.set_title(panel.title + (" (log scale)" if panel.scale == "log" else ""), fontsize=10)
    for ax in axes:
        if id(ax) not in used:
            ax.set_axis_off()
    if title:
        fig.suptitle(f"{title}\nper-layer statistics over training (layers from input, top, to output)")
    else:
        fig.suptitle("per-layer statistics over training (layers from input, top, to output)")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _axes_of(ax: object, heat: HeatMap) -> None:
    """Layer names on the left (every k-th of many), steps below, a dotted line at each new epoch."""
    n = len(heat.layers)
    every = max(1, math.ceil(n / 40))
    rows = list(range(0, n, every))
    font = 7 if n <= 20 else 5
    ax.set_yticks(rows, [_short(heat.layers[i]) for i in rows], fontsize=font)  # type: ignore[attr-defined]
    m = len(heat.steps)
    ticks = sorted({round(j) for j in [k * (m - 1) / 5 for k in range(6)]}) if m > 1 else [0]
    ax.set_xticks(ticks, [str(heat.steps[j]) for j in ticks], fontsize=7)  # type: ignore[attr-defined]
    ax.set_xlabel("step (dotted: a new epoch)", fontsize=8)  # type: ignore[attr-defined]
    for j in range(1, m):
        if heat.epochs[j] != heat.epochs[j - 1]:
            ax.axvline(j - 0.5, color="white", linestyle=":", linewidth=0.8)  # type: ignore[attr-defined]


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1) :]
