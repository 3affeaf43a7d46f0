"""`zoo diagnose RUN_DIR`: what went wrong in a run, named from what it recorded, with the evidence and the usual
remedies (:mod:`zoo.diagnosis`); the findings are written to ``diagnosis.json`` in the run folder.

A run folder is what `zoo fit` writes: ``metrics.csv`` (the CSV logger) and ``layer_stats.csv`` (the layer
statistics, on by default), beside ``config.yaml`` and ``test_metrics.json``. `zoo fit` runs the same diagnosis
when it ends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo diagnose",
        description="Name what went wrong in a training run (vanishing or exploding gradients, dead or saturated "
        "units, a learning rate too high or too low, over- or underfitting, ...) from what it recorded, with the "
        "evidence and the usual remedies; writes diagnosis.json into the run folder.",
        epilog="example:\n  zoo diagnose runs/digits_mlp/version_0\n  zoo diagnose runs/digits_mlp/version_0 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run folder, runs/<name>/version_<n>/ (metrics.csv, layer_stats.csv)")
    parser.add_argument("--json", action="store_true", help="print diagnosis.json instead of the text")
    return parser


def main(argv: list[str]) -> None:
    """Entry point of `zoo diagnose`. A folder that is not a run is a DataError (exit code 2)."""
    from zoo.commands.report import find_run
    from zoo.diagnosis import DIAGNOSIS_FILE, LAYER_STATS_FILE, diagnose_run, summary, write

    opts = build_parser().parse_args(argv)
    run = Path(opts.run_dir)
    if not (run / LAYER_STATS_FILE).is_file():
        find_run(run)  # no such folder, or no metrics.csv either: the error names the run folders below it
    findings, record = diagnose_run(run)
    if not record.epochs and not record.layers:
        raise DataError(f"{run}: metrics.csv and {LAYER_STATS_FILE} hold no values: the run stopped before logging")
    path = write(run, findings, record.facts)
    if opts.json:
        print(json.dumps(json.loads(path.read_text()), indent=2))
        return
    print(summary(findings, str(run)))
    print(f"written to {run / DIAGNOSIS_FILE}")
