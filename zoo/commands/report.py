"""`zoo report RUN_DIR`: a run's pictures as PNG files; `zoo report RUN_DIR RUN_DIR ...`: runs compared.

A run folder is what `zoo fit` writes: ``runs/<name>/version_<n>/`` (W&B, MLflow: ``runs/<name>/<run id>/``)
holding ``metrics.csv``, ``config.yaml``, ``checkpoints/`` and ``test_metrics.json``, whatever the logger (a
CSVLogger writes ``metrics.csv`` beside the others: zoo.run.files.MetricsInRunFolder). The confusion matrix comes
from the ``test_confusion.json`` the RunPictures callback writes at test time, the sample pictures
(predictions, top losses, a training batch) from its ``samples.npz``; without them, the confusion matrix,
predictions and top losses come from testing the run's best (else last) checkpoint on the test split of the
data it was trained on. The layer heat maps read the run's ``layer_stats.csv``. Two run folders or more are
compared instead (:mod:`zoo.compare`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from zoo.errors import ConfigError, DataError, ZooError

PLOTS = (
    "learning_curves",
    "learning_rate",
    "confusion_matrix",
    "predictions",
    "top_losses",
    "train_batch",
    "layer_stats",
)
RUN_FILES = "metrics.csv, config.yaml, checkpoints/, test_metrics.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo report",
        description="Draw a run's learning curves, learning rate per optimizer group, test confusion matrix, "
        "sample predictions, top losses, a training batch and per-layer heat maps as PNG files. Given two run "
        "folders or more: their learning curves in one figure and one table of their metrics and the settings "
        "that differ.",
        epilog="example:\n  zoo report runs/digits_cnn/version_0\n"
        "  zoo report runs/digits_cnn/version_0 --output report/ --plots learning_curves top_losses\n"
        "  zoo report runs/digits_cnn/version_0 runs/digits_mlp/version_0 --output compare/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir", nargs="+", help=f"a run folder, runs/<name>/version_<n>/ ({RUN_FILES}); two or more to compare"
    )
    parser.add_argument(
        "--output", help="folder for the files (default: the run folder; comparing runs: compare/ here)"
    )
    parser.add_argument(
        "--plots",
        nargs="+",
        choices=PLOTS,
        default=None,
        metavar="PLOT",
        help=f"which pictures to draw, of {', '.join(PLOTS)} (default: all that apply to the run)",
    )
    return parser


class NotApplicable(ZooError):
    """A picture that this run cannot have (no LR logged, not a classifier, no epoch finished)."""


def main(argv: list[str]) -> None:
    """Entry point of `zoo report`: writes the PNG files and prints their paths.

    Pictures that do not apply to the run are skipped with a note, or are an error when asked for by name.
    """
    parser = build_parser()
    opts = parser.parse_args(argv)
    if len(opts.run_dir) > 1:
        if opts.plots:
            parser.error("--plots draws the pictures of one run; runs compared get their curves and one table")
        from zoo.compare import compare, read_run, run_names

        folders = [find_run(Path(p)) for p in opts.run_dir]  # every folder checked before anything is written
        names = run_names(opts.run_dir)
        runs = [read_run(run, name, read_history(run)) for run, name in zip(folders, names)]
        table, written = compare(runs, Path(opts.output or "compare"))
        print(table)
        print("\n".join(map(str, written)))
        return
    from zoo.callbacks.pictures import PICTURES  # imports Lightning: a comparison of runs does without

    run = find_run(Path(opts.run_dir[0]))
    history = read_history(run)
    out = Path(opts.output) if opts.output else run
    out.mkdir(parents=True, exist_ok=True)
    title = opts.run_dir[0].rstrip("/")
    drawers: dict[str, Callable[..., Path]] = {
        "learning_curves": _learning_curves,
        "learning_rate": _learning_rate,
        "confusion_matrix": _confusion,
        "predictions": partial(_samples, "predictions"),
        "top_losses": partial(_samples, "top_losses"),
        "train_batch": partial(_samples, "train_batch"),
        "layer_stats": _layer_stats,
    }
    try:
        for name in opts.plots or PLOTS:
            try:
                path = drawers[name](run, history, out / PICTURES[name], title)
            except NotApplicable as reason:
                if opts.plots:
                    raise
                print(f"{PICTURES[name]} skipped: {reason}")
            else:
                print(path)
    finally:
        test_checkpoint.cache_clear()  # the tested task and data: for this report only


def _learning_curves(run: Path, history: dict[str, dict[float, float]], path: Path, title: str) -> Path:
    from zoo.plots import best_epoch, epochs_of, plot_learning_curves

    if not epochs_of(history):
        raise NotApplicable(f"{run}/metrics.csv has no training or validation epochs (a `zoo test` run?)")
    checkpoints = [p.name for p in (run / "checkpoints").glob("*.ckpt")]
    plot_learning_curves(history, path, best_epoch(history, checkpoints), title)
    return path


def _learning_rate(run: Path, history: dict[str, dict[float, float]], path: Path, title: str) -> Path:
    from zoo.plots import plot_learning_rates

    if plot_learning_rates(history, path, title, optimizer_group_names(run)) is None:
        raise NotApplicable(
            f"{run}/metrics.csv has no learning rates (lr-* columns): the run had no "
            "LearningRateMonitor (the zoo adds one whenever a logger is on)"
        )
    return path


def _confusion(run: Path, history: dict[str, dict[float, float]], path: Path, title: str) -> Path:
    from zoo.callbacks.pictures import CONFUSION_FILE, write_confusion
    from zoo.plots import plot_confusion_matrix

    task = task_class_path(run)
    if not _is_classifier(task, history):
        kind = f"a {task.rpartition('.')[2]}" if task else "not a classification"
        raise NotApplicable(f"{run} is {kind} run: a confusion matrix needs a classifier")
    out = path.parent
    source = next((p for p in (run / CONFUSION_FILE, out / CONFUSION_FILE) if p.is_file()), None)
    if source is not None:
        names, matrix = read_confusion(source)
    else:
        names, matrix, ckpt = confusion_from_checkpoint(run)
        write_confusion(out / CONFUSION_FILE, matrix, names)
        print(f"{out / CONFUSION_FILE} written (no {CONFUSION_FILE} in the run: tested {ckpt})")
    plot_confusion_matrix(matrix, names, path, f"{title}: test confusion matrix")
    return path


def _samples(name: str, run: Path, history: dict[str, dict[float, float]], path: Path, title: str) -> Path:
    from zoo.plots_samples import DRAWERS, SAMPLES_FILE, read_samples, write_samples

    out = path.parent
    source = next((p for p in (run / SAMPLES_FILE, out / SAMPLES_FILE) if p.is_file()), None)
    sets = read_samples(source) if source is not None else {}
    if name not in sets and name != "train_batch":
        if checkpoint_of(run) is None:
            raise NotApplicable(f"{run} has no {SAMPLES_FILE} and no checkpoint to test for its samples")
        try:
            tested, ckpt = samples_from_checkpoint(run)
        except DataError as err:  # no test split, data that cannot be rebuilt here: the picture is skipped
            raise NotApplicable(str(err)) from None
        sets.update(tested)
        write_samples(out / SAMPLES_FILE, sets)
        missing = f"no {name} in {source}" if source is not None else f"no {SAMPLES_FILE} in the run"
        print(f"{out / SAMPLES_FILE} written ({missing}: tested {ckpt})")
    if name not in sets:
        raise NotApplicable(
            f"{run} has no {SAMPLES_FILE} with a training batch: the RunPictures callback keeps one when it trains"
        )
    samples, source_note = sets[name]
    DRAWERS[name](samples, path, title=f"{title}: {source_note}")
    return path


def _layer_stats(run: Path, history: dict[str, dict[float, float]], path: Path, title: str) -> Path:
    from zoo.diagnosis.record import LAYER_STATS_FILE
    from zoo.plots_layers import plot_layer_stats

    if not (run / LAYER_STATS_FILE).is_file():
        raise NotApplicable(f"{run} has no {LAYER_STATS_FILE} (written by the layer-statistics callback)")
    if plot_layer_stats(run / LAYER_STATS_FILE, path, title) is None:
        raise NotApplicable(f"{run / LAYER_STATS_FILE} has no values")
    return path


def find_run(run: Path) -> Path:
    """The run folder, checked: it must hold a ``metrics.csv``.

    Raises:
        DataError: no such folder, or no metrics.csv in it (with the run folders below it, if any).
    """
    if not run.is_dir():
        raise DataError(f"{run}: no such folder; give a run folder such as runs/<name>/version_<n> ({RUN_FILES})")
    if (run / "metrics.csv").is_file():
        return run
    versions = sorted((p for p in run.glob("*/metrics.csv")), key=lambda p: p.stat().st_mtime)
    hint = f"; did you mean {versions[-1].parent}?" if versions else ""
    raise DataError(f"{run} has no metrics.csv: a run folder written by `zoo fit` holds {RUN_FILES}{hint}")


def read_history(run: Path) -> dict[str, dict[float, float]]:
    """The run's metrics per epoch, with ``test_metrics.json`` filling test values the CSV lacks."""
    from zoo.plots import read_metrics_csv

    path = run / "metrics.csv"
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: the run stopped before logging anything")
    history = read_metrics_csv(path)
    tests = run / "test_metrics.json"
    if tests.is_file():
        last = max((e for v in history.values() for e in v), default=0.0)
        for name, value in json.loads(tests.read_text()).items():
            history.setdefault(name, {last: float(value)})
    return history


def task_class_path(run: Path) -> Optional[str]:
    """The run's model class path, from its ``config.yaml`` (None when there is none to read)."""
    config_path = run / "config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text()) or {}
        model = config.get("model") or {}
        if isinstance(model, dict) and isinstance(model.get("class_path"), str):
            return model["class_path"]
    return None


def _is_classifier(class_path: Optional[str], history: dict[str, dict[float, float]]) -> bool:
    from zoo.tasks.classification import Classifier

    if class_path and class_path.startswith("zoo.tasks."):  # only the zoo's own modules are imported to find out
        import importlib

        module, _, name = class_path.rpartition(".")
        with contextlib.suppress(ImportError):
            cls = getattr(importlib.import_module(module), name, None)
            if isinstance(cls, type):
                return issubclass(cls, Classifier)
    return any(k.endswith("/acc") for k in history)  # a task of the user's own, or no config: its metrics tell


def read_confusion(path: Path) -> tuple[list[str], list[list[int]]]:
    """Class names and matrix from a ``test_confusion.json``."""
    try:
        data = json.loads(path.read_text())
        names, matrix = [str(n) for n in data["class_names"]], [[int(c) for c in row] for row in data["matrix"]]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path}: not a confusion matrix file ({type(err).__name__}: {err}); delete it and run "
            "`zoo report` again to compute it from the run's checkpoint"
        ) from None
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise DataError(f"{path}: the matrix is not {len(names)} x {len(names)} like its class names")
    return names, matrix


def optimizer_group_names(run: Path) -> list[str]:
    """The optimizer's group names in the order the task built them (stem to top), from the run's last
    checkpoint; empty when there is none to read."""
    from zoo.checkpoints import read_checkpoint

    path = checkpoint_of(run, prefer="last")
    if path is None:
        return []
    try:
        states = read_checkpoint(str(path)).get("optimizer_states") or []
    except ZooError:  # only the colours' order depends on it: not worth failing the report
        return []
    return [str(g.get("name", "")) for state in states for g in state.get("param_groups", [])]


def checkpoint_of(run: Path, prefer: str = "best") -> Optional[Path]:
    """The run's best checkpoint, else its last one (or the other way round); the newest of each kind."""
    kinds = ("best", "last") if prefer == "best" else ("last", "best")
    for kind in kinds:
        found = sorted((run / "checkpoints").glob(f"{kind}*.ckpt"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def confusion_from_checkpoint(run: Path) -> tuple[list[str], list[list[int]], Path]:
    """Test the run's best (else last) checkpoint on the test split of its own data (:func:`test_checkpoint`);
    returns class names, matrix and the checkpoint used."""
    from zoo.checkpoints import class_names

    task, datamodule, _, ckpt, path = test_checkpoint(run)
    if not hasattr(task, "test_confusion"):
        raise ConfigError(f"{path}: a {type(task).__name__}, not a classifier: it has no confusion matrix")
    matrix = task.test_confusion.compute().tolist()
    names = class_names(ckpt) or [str(n) for n in datamodule.class_names]
    if len(names) != len(matrix):
        names = [str(i) for i in range(len(matrix))]
    return names, matrix, path


def samples_from_checkpoint(run: Path) -> tuple[dict[str, tuple[list[Any], str]], Path]:
    """The test split's first samples and highest losses (for ``predictions`` and ``top_losses``), from testing
    the run's best (else last) checkpoint (:func:`test_checkpoint`); and the checkpoint used."""
    from zoo.callbacks.samples import to_samples

    task, datamodule, collector, _, path = test_checkpoint(run)
    note = f"test, {path.name}"
    sets = {"predictions": (to_samples(collector.first, task, datamodule), note)}
    if any(k.loss is not None for k in collector.top):
        sets["top_losses"] = (to_samples(collector.top, task, datamodule), note)
    return sets, path


@functools.lru_cache(maxsize=1)
def test_checkpoint(run: Path) -> tuple[Any, Any, Any, dict[str, Any], Path]:
    """Test the run's best (else last) checkpoint on the test split of its own data, rebuilt from the
    checkpoint's resolved config, once for the confusion matrix and the samples both. Returns the tested task,
    the datamodule, the samples collected (:class:`zoo.callbacks.samples.SampleCollector`), the checkpoint's
    contents and its path."""
    from lightning.pytorch import Trainer

    from zoo.callbacks.pictures import CONFUSION_FILE
    from zoo.callbacks.samples import TestSamples
    from zoo.checkpoints import load_datamodule, load_task, read_checkpoint

    path = checkpoint_of(run)
    if path is None:
        raise DataError(
            f"{run} has no {CONFUSION_FILE} and no checkpoint in {run / 'checkpoints'} to compute "
            "the confusion matrix from"
        )
    ckpt = read_checkpoint(str(path))
    task = load_task(str(path), ckpt)
    instead = "test it with `zoo test --config ... --ckpt_path` and the RunPictures callback"
    datamodule = load_datamodule(ckpt, str(path), instead)
    datamodule.setup("test")
    if datamodule.test_set is None or len(datamodule.test_set) == 0:
        raise DataError(f"{path}: its data ({type(datamodule).__name__}) has no test split (data.test_split=0)")
    print(f"testing {path} for the pictures of its test split ...")
    samples = TestSamples()
    with _quiet_lightning():
        trainer = Trainer(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            devices=1,
            callbacks=[samples],
        )
        trainer.test(task, datamodule=datamodule, verbose=False)
    return task, datamodule, samples.collector, ckpt, path


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up notes (GPU available, ...) are noise in a report's output."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
