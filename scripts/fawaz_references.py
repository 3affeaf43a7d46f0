"""Rebuilds zoo/references/ucr_fawaz2019.csv, the published accuracies `zoo benchmark` shows, from the results
files of Fawaz et al.'s repositories (clone them first; nothing here is typed in by hand):

  git clone https://github.com/hfawaz/dl-4-tsc && git clone https://github.com/hfawaz/InceptionTime
  python scripts/fawaz_references.py dl-4-tsc InceptionTime > zoo/references/ucr_fawaz2019.csv

Figures are accuracy in %, one decimal. Where the repository gives an averaged table (mean and std over 10 runs,
the tables of the paper) it is copied; for the UCR 2018 archive it gives one row per run, averaged here with
the same sample std (n - 1) its tables use. InceptionTime is an ensemble of five networks: one figure.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# The classification sets aeon ships, and their names in the UCR 2015 archive where they differ.
AEON_SETS = (
    "ACSF1",
    "ArrowHead",
    "BasicMotions",
    "GunPoint",
    "ItalyPowerDemand",
    "JapaneseVowels",
    "OSULeaf",
    "PickupGestureWiimoteZ",
)
UCR2015_NAMES = {"GunPoint": "Gun_Point"}
MODELS = {"MLP": "mlp", "FCN": "fcn", "ResNet": "resnet"}
PAPER = "Fawaz et al. 2019, Deep learning for time series classification: a review"
INCEPTION = "Fawaz et al. 2020, InceptionTime: finding AlexNet for time series classification"


def averaged_table(path: Path, source: str) -> list[dict[str, str]]:
    """``results-*-avg-std.csv``: a row per data set, ``mean(std)`` per model, 10 runs."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            dataset = next((a for a in AEON_SETS if UCR2015_NAMES.get(a, a) == row[""]), None)
            for model in MODELS if dataset else ():
                mean, std = row[model].rstrip(")").split("(")
                rows.append(dict(dataset=dataset, model=model, accuracy=mean, std=std, runs="10", source=source))
    return rows


def per_run_table(path: Path, models: dict[str, str], wanted: set[str], source: str) -> list[dict[str, str]]:
    """A results file with one row per run (``classifier_name, dataset_name, accuracy`` in [0, 1])."""
    runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = next((a for a in AEON_SETS if UCR2015_NAMES.get(a, a) == row["dataset_name"]), None)
            if name in wanted and row["classifier_name"] in models.values():
                runs[(name, row["classifier_name"])].append(100 * float(row["accuracy"]))
    rows = []
    for model, key in models.items():
        for dataset in sorted(wanted):
            values = runs.get((dataset, key))
            if values:
                std = f"{statistics.stdev(values):.1f}" if len(values) > 1 else ""
                rows.append(
                    dict(
                        dataset=dataset,
                        model=model,
                        accuracy=f"{statistics.mean(values):.1f}",
                        std=std,
                        runs=str(len(values)),
                        source=source,
                    )
                )
    return rows


def main(dl4tsc: Path, inception: Path) -> None:
    rows = averaged_table(
        dl4tsc / "results/results-uea-avg-std.csv",
        f"{PAPER} (UCR 2015 archive; dl-4-tsc results/results-uea-avg-std.csv)",
    )
    rows += averaged_table(
        dl4tsc / "results/results-mts-avg-std.csv",
        f"{PAPER} (Baydogan MTS archive; dl-4-tsc results/results-mts-avg-std.csv)",
    )
    covered = {r["dataset"] for r in rows}
    rows += per_run_table(
        dl4tsc / "results/results-ucr-128.csv",
        MODELS,
        set(AEON_SETS) - covered,
        "dl-4-tsc on the UCR 2018 archive, after the paper (results/results-ucr-128.csv)",
    )
    rows += per_run_table(
        inception / "results-InceptionTime-85.csv",
        {"InceptionTime": "InceptionTime"},
        covered,
        f"{INCEPTION} (UCR 2015 archive; InceptionTime results-InceptionTime-85.csv)",
    )
    rows += per_run_table(
        inception / "results-InceptionTime-128.csv",
        {"InceptionTime": "InceptionTime"},
        set(AEON_SETS) - covered,
        f"{INCEPTION} (UCR 2018 archive; InceptionTime results-InceptionTime-128.csv)",
    )
    writer = csv.DictWriter(sys.stdout, ["dataset", "model", "accuracy", "std", "runs", "source"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["dataset"], r["model"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
