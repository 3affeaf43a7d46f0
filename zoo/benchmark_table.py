"""What `zoo benchmark` writes from its run folders: ``benchmark.md``, ``benchmark.json`` and ``benchmark.png``.

A benchmark is one recipe over data sets x seeds; each run is a `zoo fit` whose folder
``<out>/<data set>/seed_<S>/`` holds the ``test_metrics.json`` it wrote (flat floats: ``test/acc``, ... and the
baselines' ``baseline/<name>/<metric>``) and the ``benchmark_run.json`` the benchmark wrote (exit code, seconds,
command). These functions only read those files, so the table can be rebuilt from the folders at any time.

Published accuracies come from ``zoo/references/*.csv`` (columns dataset, model, accuracy in %, std, runs,
source), shipped with the package; ``scripts/fawaz_references.py`` rebuilds them from the authors' results files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

METRICS_FILE = "test_metrics.json"
RUN_FILE = "benchmark_run.json"
LOG_FILE = "benchmark.log"
BASELINE_PREFIX = "baseline/"
REFERENCE_FILES = ("ucr_fawaz2019.csv",)
# Scores in [0, 1] shown in % beside the published accuracies (which are in %).
PERCENT_METRICS = ("acc", "f1", "auroc")
_DPI = 120


@dataclass
class DataSet:
    """A data set of the benchmark: its name, and its ``.ts`` files (None: the files aeon ships by that name)."""

    name: str
    train_file: Optional[str] = None
    test_file: Optional[str] = None
    n_train: Optional[int] = None
    n_test: Optional[int] = None


@dataclass
class RunResult:
    """One run of the benchmark as its folder records it."""

    dataset: str
    seed: int
    folder: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: Optional[float] = None
    log: Optional[str] = None
    reason: str = ""  # why a run failed


def seed_folder(out: Path, dataset: str, seed: int) -> Path:
    """Where the run of ``dataset`` with ``seed`` writes (the CSV logger's ``save_dir/name/version``)."""
    return out / dataset / f"seed_{seed}"


def read_run(folder: Path, dataset: str, seed: int) -> Optional[RunResult]:
    """The run recorded in ``folder``, or None when it has not run (or was stopped before it finished)."""
    record_path, metrics_path = folder / RUN_FILE, folder / METRICS_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    log = str(folder / LOG_FILE) if (folder / LOG_FILE).is_file() else None
    code = record.get("returncode")
    if metrics_path.is_file() and code in (None, 0):
        metrics = {k: float(v) for k, v in json.loads(metrics_path.read_text()).items()}
        return RunResult(dataset, seed, str(folder), True, metrics, record.get("seconds"), log)
    if code is None:
        return None
    reason = f"exit code {code}" if code else f"no {METRICS_FILE} written"
    return RunResult(dataset, seed, str(folder), False, {}, record.get("seconds"), log, reason)


def read_references(names: Sequence[str] = REFERENCE_FILES) -> list[dict[str, Any]]:
    """The published results shipped with the zoo: dicts of dataset, model, accuracy (%), std, runs, source."""
    rows = []
    for name in names:
        text = resources.files("zoo").joinpath("references", name).read_text(encoding="utf-8")
        for row in csv.DictReader(io.StringIO(text)):
            std = row.get("std") or ""
            rows.append({**row, "accuracy": float(row["accuracy"]), "std": float(std) if std else None})
    return rows


def short_name(metric: str) -> str:
    """``test/acc`` -> ``acc``: the name a baseline's metric has after ``baseline/<name>/``."""
    return metric.rsplit("/", 1)[-1]


def baseline_names(runs: Sequence[RunResult]) -> list[str]:
    """Every baseline that some run's metrics hold (``baseline/<name>/<metric>``), sorted."""
    keys = {k for r in runs for k in r.metrics if k.startswith(BASELINE_PREFIX)}
    return sorted({k[len(BASELINE_PREFIX) :].rsplit("/", 1)[0] for k in keys})


def mean_std(values: Sequence[float]) -> Optional[dict[str, Any]]:
    """Mean, sample standard deviation (n - 1; None for one value) and count, or None without values."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.mean(values), "std": std, "n": len(values)}


def summarise(
    datasets: Sequence[DataSet], runs: Sequence[RunResult], metric: str, references: Sequence[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per data set: the model's ``metric`` and each baseline's over the seeds that finished, seconds per run,
    the runs that failed, and the published references for that data set."""
    baselines = baseline_names(runs)
    summary = {}
    for data in datasets:
        mine = [r for r in runs if r.dataset == data.name]
        done = [r for r in mine if r.ok]
        summary[data.name] = {
            "n_train": data.n_train,
            "n_test": data.n_test,
            "model": mean_std([r.metrics.get(metric, math.nan) for r in done]),
            "seeds": {r.seed: r.metrics.get(metric) for r in done},
            "baselines": {
                name: mean_std([r.metrics.get(f"{BASELINE_PREFIX}{name}/{short_name(metric)}", math.nan) for r in done])
                for name in baselines
            },
            "seconds": mean_std([r.seconds for r in done if r.seconds is not None]),
            "ok": len(done),
            "runs": len(mine),
            "failed": [{"seed": r.seed, "reason": r.reason, "log": r.log} for r in mine if not r.ok],
            "references": [ref for ref in references if ref["dataset"] == data.name],
        }
    return summary


# --- writing --------------------------------------------------------------------------------------------
def _scale(metric: str) -> float:
    return 100.0 if short_name(metric) in PERCENT_METRICS else 1.0


def _number(value: float, metric: str) -> str:
    return f"{value * 100:.1f}" if _scale(metric) == 100 else f"{value:.4g}"


def _cell(stats: Optional[dict[str, Any]], metric: str) -> str:
    if stats is None:
        return "–"
    if stats["std"] is None:
        return _number(stats["mean"], metric)
    return f"{_number(stats['mean'], metric)} ± {_number(stats['std'], metric)}"


def _seconds(stats: Optional[dict[str, Any]]) -> str:
    if stats is None:
        return "–"
    value = stats["mean"]
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def markdown_table(summary: dict[str, dict[str, Any]], metric: str, title: str) -> str:
    """The benchmark as a markdown table, then the sources of the published figures and the failed runs."""
    baselines = sorted({name for row in summary.values() for name in row["baselines"]})
    unit = " (%)" if _scale(metric) == 100 else ""
    header = [
        "data set",
        "n train/test",
        f"model {metric}{unit}",
        *(f"baseline {b}" for b in baselines),
        "published accuracy (%)",
        "time per run",
        "ok seeds",
    ]
    sources: dict[str, int] = {}
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary.items():
        published = []
        for ref in row["references"]:
            mark = sources.setdefault(ref["source"], len(sources) + 1)
            std = f" ± {ref['std']:.1f}" if ref["std"] is not None else ""
            published.append(f"{ref['model']} {ref['accuracy']:.1f}{std} [{mark}]")
        sizes = f"{row['n_train']}/{row['n_test']}" if row["n_train"] is not None else "–"
        cells = [
            name,
            sizes,
            _cell(row["model"], metric),
            *(_cell(row["baselines"].get(b), metric) for b in baselines),
            ", ".join(published) or "–",
            _seconds(row["seconds"]),
            f"{row['ok']}/{row['runs']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample std over the seeds that finished; the baselines' {short_name(metric)} is read from "
        f"`baseline/<name>/{short_name(metric)}` in each run's {METRICS_FILE}."
    )
    if sources:
        lines += ["", "Published accuracy (mean ± std over the authors' runs):"]
        lines += [f"[{mark}] {source}" for source, mark in sources.items()]
    failed = [(name, f) for name, row in summary.items() for f in row["failed"]]
    if failed:
        lines += ["", "Failed runs:"]
        lines += [f"- {name} seed {f['seed']}: {f['reason']}; log {f['log'] or '(none)'}" for name, f in failed]
    return "\n".join(lines) + "\n"


def plot_benchmark(summary: dict[str, dict[str, Any]], metric: str, path: Path, title: str) -> Path:
    """Per data set: the model's seeds as dots and their mean as a bar, each baseline's mean and the published
    accuracies (when ``metric`` is an accuracy) as markers. Saved to ``path`` (PNG)."""
    from zoo.plots import new_figure

    names = list(summary)
    scale = _scale(metric)
    width = max(5.0, 1.3 * len(names) + 2.5) + 1.8  # the legend goes on the right
    fig, (ax,) = new_figure(width, 4.5)
    markers = "s^vD<>ph*"
    baselines = sorted({b for row in summary.values() for b in row["baselines"]})
    models = sorted({ref["model"] for row in summary.values() for ref in row["references"]})
    labelled: set[str] = set()

    def label(text: str) -> Optional[str]:
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for i, name in enumerate(names):
        row = summary[name]
        seeds = [v * scale for v in row["seeds"].values() if v is not None and not math.isnan(v)]
        if seeds:
            ax.scatter(
                [i - 0.2] * len(seeds), seeds, color="C0", alpha=0.6, s=18, zorder=3, label=label("model, per seed")
            )
            ax.hlines(row["model"]["mean"] * scale, i - 0.32, i - 0.08, color="C0", lw=2.5, label=label("model, mean"))
        for j, base in enumerate(baselines):
            stats = row["baselines"].get(base)
            if stats is not None:
                ax.scatter(
                    [i],
                    [stats["mean"] * scale],
                    marker=markers[j % len(markers)],
                    color=f"C{1 + j % 8}",
                    s=36,
                    zorder=3,
                    label=label(f"baseline {base}"),
                )
        if short_name(metric) == "acc":
            for ref in row["references"]:
                k = models.index(ref["model"])
                ax.scatter(
                    [i + 0.22],
                    [ref["accuracy"] * scale / 100],
                    marker="x",
                    color=f"C{(k + 4) % 10}",
                    s=36,
                    zorder=3,
                    label=label(f"published {ref['model']}"),
                )
    tilt = len(names) > 4
    ax.set_xticks(range(len(names)), names, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(f"{metric}{' (%)' if scale == 100 else ''}")
    ax.set_title(textwrap.fill(title, int(width * 10)), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=_DPI)
    return path


def write_benchmark(
    out: Path,
    datasets: Sequence[DataSet],
    runs: Sequence[RunResult],
    metric: str,
    title: str,
    extra: Optional[dict[str, Any]] = None,
) -> tuple[str, list[Path]]:
    """Write ``benchmark.md``, ``benchmark.json`` and ``benchmark.png`` into ``out``; returns the markdown and
    the paths. ``extra`` (the config, seeds, overrides, ...) goes into the JSON as is."""
    summary = summarise(datasets, runs, metric, read_references())
    table = markdown_table(summary, metric, title)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "benchmark.md", out / "benchmark.json", out / "benchmark.png"
    md.write_text(table, encoding="utf-8")
    content = {
        **(extra or {}),
        "metric": metric,
        "datasets": [asdict(d) for d in datasets],
        "runs": [asdict(r) for r in runs],
        "summary": summary,
    }
    js.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    plot_benchmark(summary, metric, png, title)
    return table, [md, js, png]
