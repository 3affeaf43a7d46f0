"""`zoo tune`: hyperparameter search over any config key with Optuna.

    zoo tune --config configs/experiments/digits_mlp.yaml --search configs/search/digits_mlp.yaml \\
        --trials 30 --metric val/acc

The search space is a YAML file mapping dotted config keys (the ones `zoo fit --help` shows, the
``finetuning.*`` group included) to distributions::

    model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    model.init_args.backbone_kwargs.hidden_sizes: {type: categorical, choices: [[128], [256, 128]]}
    data.init_args.batch_size: {type: int, low: 16, high: 128, log: true}
    finetuning.strategy: {type: categorical, choices: [feature_extraction, progressive]}

Every key is checked against the resolved config before a trial runs. Each trial is the config plus
the trial's values plus the command line's ``--key=value`` overrides; it is logged under
``runs/tune/<study>/trial_<n>/`` and scored by the best value of ``--metric`` over its validation
epochs. At the end the trials are shown best first, and the best one is written as a config that
``zoo fit --config runs/tune/<study>/best.yaml`` runs as is (overrides included), plus ``best.json``.

Storage and several machines: the study lives in ``sqlite:///runs/tune/<study>.db`` unless
``--storage`` names another SQLAlchemy URL. Running the same command again resumes it: ``--trials``
is the study's total, so only the missing trials run (an interrupted trial does not count; its values
are tried again). Processes on one machine can share the SQLite file; to spread a study over machines, point
them all at one database server, e.g. ``--storage postgresql://user:pass@host/db`` or
``mysql+pymysql://...`` (needs that database's driver), and start the same command on each. Give each
worker its own ``--seed``, or none, so they do not propose the same values. A worker that dies is
noticed by its missing heartbeat after about a minute, and its trial's values are tried again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback  # already loaded by cli.py; only optuna is imported late

from zoo.commands.search_space import Param, check_keys, load_space
from zoo.errors import ConfigError, ZooError, zoo_error_in
from zoo.run.build import build, dump_with, parse, quiet_cli

_MAXIMIZED = ("acc", "f1", "auroc", "auc", "precision", "recall", "r2", "map", "iou", "dice")
_MINIMIZED = ("loss", "mae", "mape", "mse", "rmse", "error", "perplexity", "nll")
# A worker's trial is known dead once its heartbeat (written every HEARTBEAT s) is GRACE s old.
HEARTBEAT, GRACE = 20, 60


class TrialError(ZooError):
    """A trial's config or training failed: the trial is marked failed and the study goes on."""


class _MetricMissing(ConfigError):
    """``--metric`` is not among the logged metrics: every trial would fail, so the study stops."""


def build_parser() -> argparse.ArgumentParser:
    """The options of `zoo tune` (config overrides such as ``--trainer.max_epochs=5`` are taken apart)."""
    parser = argparse.ArgumentParser(
        prog="zoo tune",
        description="\n\n".join(__doc__.split("\n\n", 2)[:2])
        + "\n\nDotted config overrides (--trainer.max_epochs=5, --data.init_args.seed=1, ...) go to every trial.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the zoo config every trial starts from")
    parser.add_argument("--search", required=True, help="the search space: a YAML file of dotted keys")
    parser.add_argument("--trials", type=int, help="trials in the study in all (default: the grid's size, else 20)")
    parser.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe", help="tpe: Bayesian (default)")
    parser.add_argument(
        "--pruner",
        choices=("median", "hyperband", "none"),
        default="median",
        help="stops trials whose --metric falls behind, after each validation (default median)",
    )
    parser.add_argument("--startup_trials", type=int, default=5, help="median: trials completed before pruning")
    parser.add_argument("--warmup_epochs", type=int, default=0, help="median: epochs of a trial before pruning it")
    parser.add_argument("--metric", default="val/loss", help="the logged metric to optimise (default val/loss)")
    parser.add_argument("--direction", choices=("minimize", "maximize"), help="default: from the metric's name")
    parser.add_argument("--study", help="the study's name (default: the config's file name)")
    parser.add_argument(
        "--storage",
        help="SQLAlchemy URL; default sqlite:///runs/tune/<study>.db; postgresql:// or mysql:// shares one study "
        "between machines",
    )
    parser.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    parser.add_argument("--seed", type=int, help="seeds the sampler (give each parallel worker its own)")
    return parser


def main(argv: list[str]) -> None:
    """`zoo tune`: run (or resume) a study, then print its trials and write the best config."""
    from zoo.commands import parse_with_overrides

    opts, overrides = parse_with_overrides(build_parser(), argv)
    try:
        tune(opts, overrides)
    except KeyboardInterrupt:
        sys.stderr.write("zoo tune: interrupted; run the same command again to resume the study\n")
        raise SystemExit(130) from None


def tune(opts: argparse.Namespace, overrides: list[str]) -> None:
    """Check the space against the config, run the missing trials, then report."""
    space = load_space(opts.search)
    if opts.sampler == "grid":
        try:
            grid = {p.key: p.grid_values() for p in space}
        except ConfigError as err:
            raise ConfigError(f"{opts.search}: {err}") from None
        size = math.prod(len(v) for v in grid.values())
        if opts.trials is not None and opts.trials > size:
            print(f"zoo tune: the grid has {size} points; running {size} trials, not {opts.trials}")
        target = size if opts.trials is None else min(opts.trials, size)
    else:
        target = 20 if opts.trials is None else opts.trials
    direction = opts.direction or _direction_of(opts.metric)
    parser, base = parse(["--config", opts.config, *overrides])
    check_keys(space, base, opts.search)
    name = opts.study or Path(opts.config).stem
    root = Path("runs") / "tune" / name

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the zoo prints one line per trial instead
    storage_url = opts.storage or f"sqlite:///{root.parent / name}.db"
    lock = _StudyLock(storage_url)
    lock.acquire()  # two workers creating the tables at once would collide
    try:
        study = _open_study(optuna, name, storage_url, direction, opts, space)
        done = _counted(study)
    finally:
        lock.release()
    if study.user_attrs.get("metric", opts.metric) != opts.metric:
        raise ConfigError(
            f"study {name!r} optimises {study.user_attrs['metric']}, not {opts.metric}; use another --study"
        )
    study.set_user_attr("metric", opts.metric)
    print(f"zoo tune: study {name!r} in {storage_url}: {done} of {target} trials done, {opts.metric} ({direction})")
    started = time.monotonic()
    aborted: list[Exception] = []
    objective = _Objective(parser, base, space, opts.metric, direction == "maximize", root, lock, aborted)
    for _ in range(target):  # a process never needs more, whatever happens to the others' trials
        if aborted:
            break
        if opts.timeout is not None and time.monotonic() - started >= opts.timeout:
            print(f"zoo tune: --timeout {opts.timeout:g} s reached")
            break
        lock.acquire()
        try:
            # Counting and creating the next trial happen under the lock, so workers sharing the study
            # together run exactly --trials; the objective lets go as soon as its trial exists.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            _requeue_interrupted(study)
            if _counted(study) >= target:
                break
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_announce(opts.metric, space)])
        finally:
            lock.release()
    if aborted:
        raise aborted[0]
    report(study, space, parser, base, root, opts.metric)


def _direction_of(metric: str) -> str:
    words = re.split(r"[^a-z0-9]+", metric.rsplit("/", 1)[-1].lower())
    if any(w in _MINIMIZED for w in words):
        return "minimize"
    if any(w in _MAXIMIZED or w.startswith("acc") for w in words):
        return "maximize"
    raise ConfigError(f"--metric {metric}: give --direction minimize or maximize (not clear from the name)")


class _StudyLock:
    """A lock across the processes of one machine, beside a SQLite study; nothing for a server database
    (whose workers may then, rarely, run one trial more than asked)."""

    def __init__(self, storage_url: str) -> None:
        self.path: Optional[Path] = None
        if storage_url.startswith("sqlite:///") and ":memory:" not in storage_url:
            self.path = Path(storage_url[len("sqlite:///") :] + ".lock")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Any = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return
        if self.path is not None and self._file is None:
            self._file = open(self.path, "a+")
            fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def _open_study(optuna: Any, name: str, url: str, direction: str, opts: argparse.Namespace, space: list[Param]) -> Any:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # waits on busy workers
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9 and what finds dead workers
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        done = 0
    # Seeded from --seed plus the trials already there, so a resumed run does not repeat the first values.
    seed = None if opts.seed is None else opts.seed + done
    if opts.sampler == "grid":

        class _Grid(optuna.samplers.GridSampler):
            def after_trial(self, *args: Any) -> None:
                # The parent only stops the optimize() loop when the grid is done, which the zoo's own loop
                # does (one trial per call), and it fails on a re-queued interrupted trial (no grid_id).
                pass

        sampler = _Grid({p.key: p.grid_values() for p in space}, seed=seed)
    elif opts.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    if opts.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=opts.startup_trials, n_warmup_steps=opts.warmup_epochs)
    elif opts.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner()
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} was created to {study.direction.name.lower()}, not {direction}")
    return study


def _counted(study: Any) -> int:
    """Trials that count toward --trials: finished ones, failures with a reason, and those running now.
    An interrupted trial (or one of a dead worker) has no reason: it does not count."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in counted or "error" in t.user_attrs for t in study.get_trials(deepcopy=False))


def _requeue_interrupted(study: Any) -> None:
    """Queue each interrupted trial's values once more, so the study still tries them (a grid point,
    above all, would otherwise be lost: the grid sampler counts a failed trial as visited)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


class _Objective:
    """Builds and trains one trial; its value is the best ``metric`` over the validation epochs."""

    def __init__(
        self,
        parser: Any,
        base: Any,
        space: list[Param],
        metric: str,
        maximize: bool,
        root: Path,
        lock: _StudyLock,
        aborted: list[Exception],
    ) -> None:
        self.parser, self.base, self.space, self.metric, self.maximize = parser, base, space, metric, maximize
        self.root, self.lock, self.aborted = root, lock, aborted

    def __call__(self, trial: Any) -> float:
        import optuna

        self.lock.release()  # the trial exists: other workers may count it and start theirs
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        values = {p.key: p.decode(p.suggest(trial)) for p in self.space}
        run_dir = self.root / f"trial_{trial.number}"
        sigint = signal.getsignal(signal.SIGINT)
        try:
            return self._run(trial, values, run_dir)
        except optuna.TrialPruned:
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns Ctrl-C into sys.exit(1); a bad config makes the CLI's parser exit too.
            config_error = getattr(exc, "zoo_config_error", None)  # set by _run on the parser's exit
            if isinstance(exc, SystemExit) and config_error:
                message = config_error
            else:
                trial.set_user_attr("interrupted", True)
                raise KeyboardInterrupt from exc
        except Exception as exc:
            message = _message(exc)
            if isinstance(exc, _MetricMissing):
                self.aborted.append(exc)
        finally:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C after catching one
        trial.set_user_attr("error", message)
        raise TrialError(message)

    def _run(self, trial: Any, values: dict[str, Any], run_dir: Path) -> float:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "trial.yaml").write_text(dump_with(self.parser, self.base, values))
        logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(self.root), "name": run_dir.name, "version": ""},
        }
        args = [
            "--config",
            str(run_dir / "trial.yaml"),
            f"--trainer.logger={json.dumps(logger)}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured), quiet_cli():  # the parser's message is the trial's reason
                model, datamodule, trainer = build(args)
        except SystemExit as exc:
            text = captured.getvalue().replace("zoo: error: ", "").split("\nRun with --help")[0].strip()
            # The parser's own SystemExit carries the reason up (SystemExit declares no such attribute).
            exc.zoo_config_error = text or f"invalid config (exit code {exc.code})"  # type: ignore[attr-defined]
            raise
        sys.stderr.write(captured.getvalue())
        reporter = _Reporter(trial, self.metric, self.maximize)
        trainer.callbacks.append(reporter)
        with quiet_cli():
            trainer.fit(model, datamodule=datamodule)
        trial.set_user_attr("epochs", len(reporter.values))
        if not reporter.values:
            raise TrialError(f"no validation ran, so {self.metric} was never measured")
        if math.isnan(reporter.best):
            raise TrialError(f"{self.metric} is NaN: training diverged")
        return reporter.best


class _Reporter(Callback):
    """Reports the monitored metric to the trial after each validation, and prunes when told to."""

    def __init__(self, trial: Any, metric: str, maximize: bool) -> None:
        self.trial, self.metric, self.maximize = trial, metric, maximize
        self.values: list[float] = []

    @property
    def best(self) -> float:
        finite = [v for v in self.values if not math.isnan(v)]
        return (max if self.maximize else min)(finite) if finite else math.nan

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        import optuna

        if trainer.sanity_checking:
            return
        if self.metric not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise _MetricMissing(f"--metric {self.metric} was not logged; the metrics are: {logged}")
        value = float(trainer.callback_metrics[self.metric])
        self.values.append(value)
        self.trial.report(value, step=len(self.values) - 1)  # one step per validation
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={value:.4g} after {len(self.values)} validation(s)")


def _message(exc: BaseException) -> str:
    err = zoo_error_in(exc) or exc
    return f"{type(err).__name__}: {err}" if not isinstance(err, ZooError) else str(err)


def _short_params(params: dict[str, Any], space: list[Param]) -> str:
    """``lr=0.0012 hidden_sizes=[128]``: each key by its last part (the whole key where two share it)."""
    leaves = [k.rsplit(".", 1)[-1] for k in params]
    decode = {p.key: p.decode for p in space}
    shown = []
    for key, value in params.items():
        value = decode.get(key, lambda v: v)(value)
        name = key.rsplit(".", 1)[-1] if leaves.count(key.rsplit(".", 1)[-1]) == 1 else key
        text = f"{value:.4g}" if isinstance(value, float) else value if isinstance(value, str) else json.dumps(value)
        shown.append(f"{name}={text}")
    return " ".join(shown)


def _announce(metric: str, space: list[Param]) -> Any:
    def announce(study: Any, trial: Any) -> None:
        value = f" {metric}={trial.value:.4f}" if trial.value is not None else ""
        why = trial.user_attrs.get("error", "")
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        print(
            f"zoo tune: trial {trial.number} {trial.state.name}{value} ({seconds:.1f} s) "
            f"{_short_params(trial.params, space)}{'  ' + why if why else ''}",
            flush=True,
        )

    return announce


def report(study: Any, space: list[Param], parser: Any, base: Any, root: Path, metric: str) -> None:
    """Print the study's trials best first; write the best one as ``best.yaml`` and ``best.json``."""
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 2}
    trials.sort(key=lambda t: (order.get(t.state, 3), sign * t.value if t.value is not None else 0.0, t.number))
    table = Table(title=f"study {study.study_name}: {metric}, {study.direction.name.lower()}")
    for column in ("trial", "state", "value", "params", "duration", "note"):
        right = column in ("trial", "value", "duration")
        table.add_column(column, justify="right" if right else "left", overflow="fold", no_wrap=right)
    for t in trials:
        note = t.user_attrs.get("error") or ("interrupted" if t.state == TrialState.FAIL else "")
        if t.state == TrialState.PRUNED:
            note = f"pruned after {len(t.intermediate_values)} validation(s)"
        if "retry_of" in t.user_attrs:
            note = f"retries trial {t.user_attrs['retry_of']}; {note}".rstrip("; ")
        table.add_row(
            str(t.number),
            t.state.name,
            "" if t.value is None else f"{t.value:.4f}",
            _short_params(t.params, space),
            f"{t.duration.total_seconds():.1f} s" if t.duration else "",
            note,
        )
    Console().print(table)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise ZooError(f"study {study.study_name!r} has no completed trial yet, so no best config")
    best = study.best_trial
    decode = {p.key: p.decode for p in space}
    values = {k: decode.get(k, lambda v: v)(v) for k, v in best.params.items()}
    root.mkdir(parents=True, exist_ok=True)
    header = (
        f"# zoo tune: the best trial ({best.number}) of study {study.study_name}: {metric}={best.value:.6g}\n"
        f"# Run: zoo fit --config {root / 'best.yaml'}\n"
    )
    (root / "best.yaml").write_text(header + dump_with(parser, base, values))
    summary = {
        "study": study.study_name,
        "trial": best.number,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "value": best.value,
        "params": values,
    }
    (root / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"best: trial {best.number}, {metric}={best.value:.4f}\nwritten {root / 'best.yaml'} and best.json; "
        f"run it with: zoo fit --config {root / 'best.yaml'}"
    )
