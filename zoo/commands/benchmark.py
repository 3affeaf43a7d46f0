"""`zoo benchmark`: one recipe over data sets x seeds, as one table beside the baselines and published results.

    zoo benchmark --config configs/experiments/japanesevowels_fcn.yaml --datasets ArrowHead GunPoint --seeds 0 1 2
    zoo benchmark --config CONFIG --suite aeon-ucr --out runs/benchmark --trainer.max_epochs=100

A data set is a name that aeon ships (passed on as ``--data.name``), a ``TRAIN.ts:TEST.ts`` pair, or a folder
holding ``<X>_TRAIN.ts`` and ``<X>_TEST.ts`` (passed on as ``--data.train_file`` / ``--data.test_file``).
Each run is ``zoo fit --config CONFIG ... --seed_everything S --data.seed S`` in a process of its own, logged by
a CSV logger into ``<out>/<data set>/seed_<S>/`` with its output in ``benchmark.log`` there. A run that fails is
reported as failed and the others go on; a run that finished (its ``test_metrics.json`` is there) is reused, so
an interrupted benchmark continues where it stopped (``--rerun`` runs everything again).

Into ``--out`` go ``benchmark.md`` (the model's test metric and each baseline's as mean ± std over the seeds,
published accuracies, time per run), ``benchmark.json`` (every run's numbers) and ``benchmark.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from zoo.benchmark_table import LOG_FILE, METRICS_FILE, RUN_FILE, DataSet, RunResult, read_run, seed_folder
from zoo.errors import ConfigError, DataError

SUITES = {
    "aeon-ucr": (
        "ACSF1",
        "ArrowHead",
        "BasicMotions",
        "GunPoint",
        "ItalyPowerDemand",
        "JapaneseVowels",
        "OSULeaf",
        "PickupGestureWiimoteZ",
    ),  # every classification set aeon ships
}
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def build_parser() -> argparse.ArgumentParser:
    """The options of `zoo benchmark` (config overrides such as ``--trainer.max_epochs=5`` are taken apart)."""
    parser = argparse.ArgumentParser(
        prog="zoo benchmark",
        description="\n\n".join(p for i, p in enumerate(__doc__.split("\n\n")) if i != 1)
        + "\n\nDotted config overrides (--trainer.max_epochs=5, --model.init_args.lr=0.01, ...) go to every run.",
        epilog="example:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the recipe every run trains (a config of TimeSeries data)")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=[],
        metavar="DATA",
        help="names aeon ships, TRAIN.ts:TEST.ts pairs, folders of <X>_TRAIN.ts + <X>_TEST.ts",
    )
    parser.add_argument(
        "--suite", choices=sorted(SUITES), help=f"a named list of data sets: aeon-ucr = {' '.join(SUITES['aeon-ucr'])}"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="each data set's seeds (default 0 1 2)")
    parser.add_argument("--out", default="runs/benchmark", help="where runs and table go (default runs/benchmark)")
    parser.add_argument(
        "--metric",
        default="test/acc",
        help="the metric of the table (default test/acc); a baseline's is the same name after baseline/<name>/",
    )
    parser.add_argument("--rerun", action="store_true", help="run again the runs that already finished")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def main(argv: list[str]) -> None:
    """`zoo benchmark`: run the missing runs, then write and print the table."""
    from zoo.commands import parse_with_overrides

    parser = build_parser()
    opts, overrides = parse_with_overrides(parser, argv)
    if not opts.datasets and not opts.suite:
        parser.error("give --datasets or --suite")
    if not Path(opts.config).is_file():
        raise ConfigError(f"--config {opts.config}: no such file")
    datasets = [resolve_dataset(spec) for spec in [*SUITES.get(opts.suite or "", ()), *opts.datasets]]
    names = [d.name for d in datasets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"data set {', '.join(twice)} given twice (each has one folder under --out)")
    try:
        benchmark(opts, datasets, overrides)
    except KeyboardInterrupt:
        sys.stderr.write("zoo benchmark: interrupted; run the same command again to continue\n")
        raise SystemExit(130) from None


def resolve_dataset(spec: str) -> DataSet:
    """A data set from the command line: a name aeon ships, a ``TRAIN.ts:TEST.ts`` pair or a folder.

    Raises:
        DataError: no such files, a folder without exactly one ``_TRAIN.ts`` / ``_TEST.ts`` pair, or a name that
            aeon does not ship (the message lists those it does).
    """
    if ":" in spec and spec.endswith(".ts"):
        train, test = spec.split(":", 1)
        missing = [f for f in (train, test) if not Path(f).is_file()]
        if missing:
            raise DataError(f"--datasets {spec}: no such file {', '.join(missing)}")
        name = Path(train).stem.removesuffix("_TRAIN").removesuffix("_train")
        return counted(DataSet(name, str(Path(train).resolve()), str(Path(test).resolve())))
    path = Path(spec)
    if path.is_dir():
        pairs = [(p, p.with_name(p.name[: -len("_TRAIN.ts")] + "_TEST.ts")) for p in sorted(path.glob("*_TRAIN.ts"))]
        pairs = [(tr, te) for tr, te in pairs if te.is_file()]
        if len(pairs) != 1:
            found = ", ".join(tr.name for tr, _ in pairs) or "none"
            raise DataError(
                f"--datasets {spec}: a folder must hold one <X>_TRAIN.ts with its <X>_TEST.ts (found {found})"
            )
        train_path, test_path = pairs[0]
        name = train_path.name[: -len("_TRAIN.ts")]
        return counted(DataSet(name, str(train_path.resolve()), str(test_path.resolve())))
    if spec.endswith(".ts") or "/" in spec:
        raise DataError(f"--datasets {spec}: no such folder; give a name aeon ships, TRAIN.ts:TEST.ts or a folder")
    from datamodules.sequences import aeon_ts_files

    try:
        train, test = aeon_ts_files(spec)
    except DataError as err:
        raise DataError(f"--datasets {spec}: {err}") from None
    return counted(DataSet(spec), train, test)


def counted(data: DataSet, train: Optional[str] = None, test: Optional[str] = None) -> DataSet:
    """``data`` with the number of cases of its training and test files (counted, not parsed)."""
    data.n_train = count_cases(train or data.train_file or "")
    data.n_test = count_cases(test or data.test_file or "")
    return data


def count_cases(path: str) -> Optional[int]:
    """The number of cases in a ``.ts`` file: the lines after ``@data`` that are not blank or comments."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = (line.strip() for line in f)
            for line in lines:
                if line.lower().startswith("@data"):
                    return sum(1 for line in lines if line and not line.startswith("#"))
    except OSError:
        return None
    return None


def fit_command(config: str, data: DataSet, seed: int, out: Path, overrides: list[str]) -> list[str]:
    """The `zoo fit` arguments of one run (see :func:`run_args`)."""
    return ["fit", "--config", config, *run_args(data, seed, out, overrides)]


def run_args(data: DataSet, seed: int, out: Path, overrides: list[str]) -> list[str]:
    """What one run adds to the config: the user's overrides, then the data set, the seed, and a CSV logger into
    the run's own folder (whatever logger the config has), which the overrides cannot move elsewhere."""
    if data.train_file is None:
        data_args = [f"--data.name={data.name}", "--data.train_file=null", "--data.test_file=null"]
    else:
        data_args = ["--data.name=null", f"--data.train_file={data.train_file}", f"--data.test_file={data.test_file}"]
    folder = seed_folder(out, data.name, seed)
    logger = {"class_path": CSV_LOGGER, "init_args": {"save_dir": str(out), "name": data.name, "version": folder.name}}
    return [
        *overrides,
        *data_args,
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        f"--trainer.logger={json.dumps(logger)}",
    ]


def zoo_program() -> list[str]:
    """How to start this same `zoo` in a new process: this Python, running this copy of cli.py."""
    spec = importlib.util.find_spec("cli")
    if spec is not None and spec.origin:
        return [sys.executable, spec.origin]
    return [sys.executable, "-m", "cli"]


def execute(command: list[str], log: Path) -> int:
    """Run ``command`` with its output into ``log``; returns its exit code."""
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def benchmark(opts: argparse.Namespace, datasets: list[DataSet], overrides: list[str]) -> list[RunResult]:
    """Run what is missing (or everything, with ``--rerun``), one line of progress per run, then write the
    table; returns every run's result."""
    from zoo.benchmark_table import write_benchmark

    out = Path(opts.out).resolve()
    opts.seeds = list(dict.fromkeys(opts.seeds))  # a seed given twice is one run (one folder), counted once
    plan = [(data, seed) for data in datasets for seed in opts.seeds]
    program = zoo_program()
    todo = [(d, s) for d, s in plan if opts.rerun or not _finished(seed_folder(out, d.name, s), d.name, s)]
    if todo:  # a bad config or override fails here once, not once per run
        preflight(opts.config, run_args(todo[0][0], todo[0][1], out, overrides))
    if opts.dry_run:
        for i, (data, seed) in enumerate(plan, start=1):
            done = (data, seed) not in todo
            command = shlex.join([*program, *fit_command(opts.config, data, seed, out, overrides)])
            print(f"# run {i}/{len(plan)} {data.name} seed {seed}{' (finished: reused)' if done else ''}\n{command}")
        return []
    runs: list[RunResult] = []
    for i, (data, seed) in enumerate(plan, start=1):
        folder = seed_folder(out, data.name, seed)
        head = f"run {i}/{len(plan)}  {data.name}  seed {seed}"
        if (data, seed) not in todo:
            found = read_run(folder, data.name, seed)
            assert found is not None
            runs.append(found)
            print(f"{head}  {_outcome(found, opts.metric)}  (finished before: reused)", flush=True)
            continue
        live = sys.stdout.isatty()  # on a terminal the line shows while the run goes, in a log file once
        if live:
            print(f"{head}  ...", end="", flush=True)
        result = run_one(program, fit_command(opts.config, data, seed, out, overrides), folder, data.name, seed)
        runs.append(result)
        print(f"{chr(13) if live else ''}{head}  {_outcome(result, opts.metric)}", flush=True)
    title = f"zoo benchmark: {opts.config}, {opts.metric}, seeds {' '.join(map(str, opts.seeds))}"
    extra = {"config": opts.config, "seeds": opts.seeds, "overrides": overrides}
    table, paths = write_benchmark(out, datasets, runs, opts.metric, title, extra)
    print(f"\n{table}")
    for path in paths:
        print(path)
    return runs


def run_one(program: list[str], args: list[str], folder: Path, dataset: str, seed: int) -> RunResult:
    """One `zoo fit` in a fresh folder (what an unfinished attempt left there is removed), timed and recorded."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    code = execute([*program, *args], folder / LOG_FILE)
    seconds = time.perf_counter() - start
    record = {"returncode": code, "seconds": seconds, "command": [*program, *args]}
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    result = read_run(folder, dataset, seed)
    assert result is not None  # the record was just written
    return result


def _finished(folder: Path, dataset: str, seed: int) -> bool:
    found = read_run(folder, dataset, seed)
    return found is not None and found.ok


def preflight(config: str, args: list[str]) -> None:
    """Parse the config with one run's arguments, instantiating nothing: a typo stops the benchmark at once."""
    import logging

    from zoo.run.build import parse

    seed_logger = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to S": the runs say it
    level = seed_logger.level
    seed_logger.setLevel(logging.WARNING)
    try:
        parse(["--config", config, *args])
    finally:
        seed_logger.setLevel(level)


def _outcome(result: RunResult, metric: str) -> str:
    took = f"{result.seconds:.0f} s" if result.seconds is not None else "time unknown"
    if not result.ok:
        return f"FAILED ({result.reason}, {took}; log {result.log})"
    value = result.metrics.get(metric)
    return f"{metric}={value:.4f}  {took}" if value is not None else f"no {metric} in {METRICS_FILE}  {took}"
