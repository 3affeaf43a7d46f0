"""Comparing runs: their learning curves in one figure, and one table of their final and best metrics beside the
settings that differ between them. What `zoo report RUN_DIR RUN_DIR ...` writes.

Each run is a run folder as `zoo fit` leaves it (``metrics.csv``, ``config.yaml``, ``checkpoints/``,
``test_metrics.json``). A run is named in the figure and table by the part of its path that tells it from the
others (``runs/digits_cnn/version_0`` and ``runs/digits_mlp/version_0`` are ``digits_cnn`` and ``digits_mlp``).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import yaml

from zoo.errors import DataError
from zoo.plots import History, best_epoch, epochs_of, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "\u2014"  # a setting one run's config does not set (absent or null), a metric it did not log
COMPARE_FILES = {"curves": "learning_curves.png", "markdown": "compare.md", "csv": "compare.csv"}
_DPI = 120


@dataclass
class Run:
    """One run to compare: its folder, short name, metrics per epoch, test metrics and flattened config."""

    path: Path
    name: str
    history: History
    tests: dict[str, float] = field(default_factory=dict)
    settings: Optional[dict[str, Any]] = None  # None: the run has no config.yaml
    checkpoints: list[str] = field(default_factory=list)

    @property
    def best(self) -> Optional[int]:
        return best_epoch(self.history, self.checkpoints)


def run_names(paths: Sequence[Union[str, Path]]) -> list[str]:
    """The shortest names that tell runs apart: their paths without the folders all of them share at the start
    and at the end (``runs/a/version_0``, ``runs/b/version_0`` -> ``a``, ``b``).

    Raises:
        DataError: the same folder is given twice.
    """
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise DataError(f"{paths[i]} is given twice: compare different run folders")
    parts = [Path(os.path.normpath(p)).parts for p in paths]
    if len(parts) < 2:
        return [Path(p).name or str(p) for p in paths]
    start = 0
    while all(len(p) > start + 1 for p in parts) and len({p[start] for p in parts}) == 1:
        start += 1
    end = 0
    while all(len(p) - end - 1 > start for p in parts) and len({p[len(p) - end - 1] for p in parts}) == 1:
        end += 1
    names = ["/".join(p[start : len(p) - end]) for p in parts]
    if len(set(names)) < len(names) or not all(names):  # relative and absolute spellings of neighbouring folders
        names = [str(Path(p).resolve()) for p in paths]
    return names


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``model.init_args.backbone``); list items are numbered (``[0]``), lists
    of plain values stay whole."""
    if isinstance(config, dict):
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat if flat or not prefix else {prefix: {}}
    if isinstance(config, list) and any(isinstance(v, (dict, list)) for v in config):
        flat = {}
        for i, value in enumerate(config):
            flat.update(flatten(value, f"{prefix}[{i}]"))
        return flat
    return {prefix: config}


def differing_settings(settings: Sequence[Optional[dict[str, Any]]]) -> dict[str, list[Any]]:
    """The flattened settings whose values are not the same in every run: key -> each run's value
    (:data:`MISSING` where a run's config lacks the key or sets it to null, which mean the same: the default).
    Runs without a config are left out of the comparison and show :data:`MISSING`."""
    known = [s for s in settings if s is not None]
    keys = sorted({k for s in known for k in s})
    differ = {}
    for key in keys:
        values = [MISSING if s is None or s.get(key) is None else s[key] for s in settings]
        if len({_text(v) for v, s in zip(values, settings) if s is not None}) > 1:
            differ[key] = values
    return differ


def read_run(run: Path, name: str, history: History) -> Run:
    """A run folder's test metrics, checkpoints and flattened config, beside its ``history`` (what
    :func:`zoo.commands.report.read_history` read of its ``metrics.csv``)."""
    tests_file = run / "test_metrics.json"
    tests = {}
    if tests_file.is_file():
        try:
            tests = {k: float(v) for k, v in json.loads(tests_file.read_text()).items() if k.startswith("test/")}
        except (ValueError, TypeError, AttributeError) as err:
            raise DataError(f"{tests_file}: not a metrics file ({type(err).__name__}: {err})") from None
    config_file = run / "config.yaml"
    settings = None
    if config_file.is_file():
        try:
            settings = flatten(yaml.safe_load(config_file.read_text()) or {})
        except yaml.YAMLError as err:
            raise DataError(f"{config_file}: not YAML: {err}") from None
    checkpoints = [p.name for p in (run / "checkpoints").glob("*.ckpt")]
    return Run(run, name, history, tests, settings, checkpoints)


def metrics_of(run: Run) -> dict[str, Any]:
    """A run's numbers for the table: epochs trained, the best epoch (the best checkpoint's), each validation
    metric at the best and at the last epoch, the last training loss and the test metrics."""
    history, best = run.history, run.best
    epochs = epochs_of(history)
    row: dict[str, Any] = {"epochs": len(epochs), "best epoch": best if best is not None else MISSING}
    last = max(epochs) if epochs else None
    for name in _val_metrics(history):
        values = history[name]
        row[f"{name} (best epoch)"] = values.get(float(best), MISSING) if best is not None else MISSING
        row[f"{name} (last epoch)"] = values.get(last, MISSING) if last is not None else MISSING
    train_loss = "train/loss_epoch" if "train/loss_epoch" in history else "train/loss"
    if train_loss in history and last is not None:
        row["train/loss (last epoch)"] = history[train_loss].get(last, MISSING)
    for name in sorted(run.tests, key=lambda k: (k != "test/loss", k)):
        row[name] = run.tests[name]
    return row


def _val_metrics(history: History) -> list[str]:
    names = [k for k in history if k.startswith("val/") and not k.endswith("_step")]
    return sorted(names, key=lambda k: (k != "val/loss", k))


def comparison_table(runs: Sequence[Run]) -> list[list[str]]:
    """Rows of ``[what, kind, value of run 1, value of run 2, ...]``, a header first: the metrics of every run,
    then the settings that differ (kind ``metric`` or ``setting``)."""
    metrics = [metrics_of(r) for r in runs]
    names: list[str] = []
    for m in metrics:
        names += [k for k in m if k not in names]
    rows = [["", "kind", *(r.name for r in runs)]]
    for name in names:
        rows.append([name, "metric", *(_text(m.get(name, MISSING)) for m in metrics)])
    for key, values in differing_settings([r.settings for r in runs]).items():
        rows.append([key, "setting", *(_text(v) for v in values)])
    return rows


def _text(value: Any) -> str:
    if isinstance(value, bool):  # as the config spells it
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "null" if value is None else str(value)


def table_text(rows: list[list[str]]) -> str:
    """The table for a terminal: aligned columns, the settings under a line of their own."""
    shown = [[r[0], *r[2:]] for r in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    lines = []
    for i, (row, full) in enumerate(zip(shown, rows)):
        if i and full[1] == "setting" and rows[i - 1][1] != "setting":
            lines.append("settings that differ:")
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not any(r[1] == "setting" for r in rows[1:]):
        lines.append("settings that differ: none (or no config.yaml to read)")
    return "\n".join(lines)


def table_markdown(rows: list[list[str]], runs: Sequence[Run] = ()) -> str:
    """The table as Markdown, under the list of the runs' folders: metrics, then the settings that differ."""
    head = ["", *rows[0][2:]]
    lines = [f"- **{r.name}**: `{r.path}`" for r in runs] + ([""] if runs else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows[1:], start=1):
        if row[1] == "setting" and rows[i - 1][1] != "setting":
            lines.append("| **settings that differ** |" + " |" * (len(head) - 1))
        cells = [f"`{row[0]}`" if row[1] == "setting" else row[0], *row[2:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_compared_curves(runs: Sequence[Run], path: Optional[Union[str, Path]] = None) -> Optional[Figure]:
    """Every run's learning curves in one figure, one colour per run: the loss, then up to three validation
    metrics the runs share, training dashed and validation solid, each run's best epoch circled. None when no run
    finished an epoch."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    runs = [r for r in runs if epochs_of(r.history)]
    if not runs:
        return None
    shared = [k for k in _val_metrics(runs[0].history) if k != "val/loss" and all(k in r.history for r in runs[1:])]
    panels = ["loss", *(k.split("/", 1)[1] for k in shared[:3])]
    fig, axes = new_figure(5.0 * len(panels), 4.4, ncols=len(panels))
    losses: list[float] = []
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        train_loss = "train/loss_epoch" if "train/loss_epoch" in run.history else "train/loss"
        for ax, panel in zip(axes, panels):
            train = train_loss if panel == "loss" else f"train/{panel}"
            for key, solid in ((train, False), (f"val/{panel}", True)):
                points = sorted((run.history.get(key) or {}).items())
                ys = [p[1] for p in points]
                style = {"linestyle": "-", "marker": "."} if solid else {"linestyle": "--", "alpha": 0.6}
                ax.plot([p[0] for p in points], ys, color=color, **style)
                losses += ys if panel == "loss" else []
            values = run.history.get(f"val/{panel}") or {}
            if run.best is not None and float(run.best) in values:
                ax.plot([run.best], [values[float(run.best)]], "o", color=color, markersize=8, markerfacecolor="none")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
        axes[0].set_yscale("log")
    for ax, panel in zip(axes, panels):
        ax.set(title=panel, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", linewidth=2.5, label=r.name) for i, r in enumerate(runs)]
    handles += [
        Line2D([], [], color="0.4", linestyle="--", label="train"),
        Line2D([], [], color="0.4", linestyle="-", marker=".", label="validation"),
        Line2D([], [], color="0.4", linestyle="", marker="o", markerfacecolor="none", label="best epoch"),
    ]
    axes[0].legend(handles=handles, fontsize="small")
    fig.suptitle(f"{len(runs)} runs compared")
    if path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def compare(runs: Sequence[Run], out: Path) -> tuple[str, list[Path]]:
    """Write the runs' figure and table (Markdown and CSV) into ``out``. Returns the table as text and the files
    written."""
    rows = comparison_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plot_compared_curves(runs, out / COMPARE_FILES["curves"]) is not None:
        written.append(out / COMPARE_FILES["curves"])
    (out / COMPARE_FILES["markdown"]).write_text(table_markdown(rows, runs))
    with open(out / COMPARE_FILES["csv"], "w", newline="") as f:
        csv.writer(f).writerows([*rows[:1], ["folder", "run", *(str(r.path) for r in runs)], *rows[1:]])
    written += [out / COMPARE_FILES["markdown"], out / COMPARE_FILES["csv"]]
    folders = "\n".join(f"{r.name}: {r.path}" for r in runs)
    return f"{folders}\n\n{table_text(rows)}", written
