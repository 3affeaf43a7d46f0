"""The tabular recipes against gradient boosting, on the scikit-learn tables written as CSV files.

    python scripts/tabular_baselines.py                         # every table, seeds 0 1 2
    python scripts/tabular_baselines.py iris wine --seeds 0     # these tables, one seed

Each table is written to ``<workdir>/<name>.csv`` (target column ``target``: class names, or the value), then
trained as a user would, ``zoo fit --config configs/recipes/tabular_<task>.yaml --data.train_file <name>.csv
--data.target_column target`` with the seed set for the run and the split; scikit-learn's
HistGradientBoosting (its defaults, early stopping off) is trained on the same train + val rows
(:meth:`datamodules.TabularCSV.baseline_data`) and both are scored on the same test rows: accuracy, or R2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (sklearn.datasets loader, task); all ship with scikit-learn (california housing downloads: left out)
TABLES = {
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "iris": ("load_iris", "classification"),
    "digits": ("load_digits", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}


def write_table(name: str, folder: Path) -> Path:
    """``<folder>/<name>.csv``: the features by their names, then ``target`` (class names, or values)."""
    import pandas as pd
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, TABLES[name][0])()
    frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
    names = getattr(bunch, "target_names", None)
    classification = TABLES[name][1] == "classification"
    frame["target"] = [str(names[t]) for t in bunch.target] if classification and names is not None else bunch.target
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def run_recipe(path: Path, task: str, seed: int, workdir: Path) -> float:
    """The recipe's test accuracy or R2, trained through `zoo fit` as a user would."""
    name = f"{path.stem}_seed{seed}"
    args = [
        sys.executable,
        str(ROOT / "cli.py"),
        "fit",
        "--config",
        str(ROOT / f"configs/recipes/tabular_{task}.yaml"),
        f"--data.train_file={path}",
        "--data.target_column=target",
        f"--data.seed={seed}",
        f"--seed_everything={seed}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--pictures=false",
    ]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"zoo fit failed on {path}:\n{done.stderr[-3000:]}")
    metrics = json.loads((workdir / "runs" / name / "version_0" / "test_metrics.json").read_text())
    return metrics["test/acc" if task == "classification" else "test/r2"]


def run_boosting(path: Path, task: str, seed: int) -> float:
    """HistGradientBoosting on the recipe's own split (train + val to fit, the same test rows)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import accuracy_score, r2_score

    from datamodules import TabularCSV

    data = TabularCSV(str(path), "target", task=task, seed=seed).baseline_data()
    kind = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    model = kind(random_state=seed, early_stopping=False, categorical_features=data.categorical)
    y_train = data.y_train if task == "classification" else data.y_train.ravel()
    model.fit(data.x_train, y_train)
    if task == "classification":
        return float(accuracy_score(data.y_test, model.predict(data.x_test)))
    return float(r2_score(data.y_test.ravel(), model.predict(data.x_test)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", help=f"some of {list(TABLES)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="where the CSVs and runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        parser.error(f"unknown tables {unknown}; choose from {list(TABLES)}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tabular_"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"seeds {args.seeds}, runs in {workdir}\n")
    print("| table | metric | tabular recipe | HistGradientBoosting | difference |")
    print("|---|---|---|---|---|")
    for name in args.tables or list(TABLES):
        task = TABLES[name][1]
        path = write_table(name, workdir)
        ours = [run_recipe(path, task, seed, workdir) for seed in args.seeds]
        boosted = [run_boosting(path, task, seed) for seed in args.seeds]

        def shown(values: list[float]) -> str:
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        diff = statistics.mean(ours) - statistics.mean(boosted)
        metric = "accuracy" if task == "classification" else "R2"
        print(f"| {name} | {metric} | {shown(ours)} | {shown(boosted)} | {diff:+.3f} |", flush=True)
        per_seed = f"recipe {[round(v, 4) for v in ours]}, boosting {[round(v, 4) for v in boosted]}"
        print(f"  per seed: {per_seed}", flush=True)


if __name__ == "__main__":
    main()
