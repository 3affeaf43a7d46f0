"""Run experiment configs as a user would and write the README's results table from what they measured.

    python scripts/results.py                      # every config in configs/experiments with a target
    python scripts/results.py digits_cnn digits_vit --write   # these, then rewrite the README table
    python scripts/results.py digits_5to9_scratch digits_5to9_progressive --seeds 0 1 2 --section transfer --write

Each experiment config states its claim in a comment line, ``# target: test/acc >= 0.97``; the
slow end-to-end tests assert the same lines, so the README, the tests and the configs cannot drift.
A ``# comparison: GROUP`` line puts configs in a group compared over seeds (transfer vs scratch).
A ``# requires: NAME`` line names an experiment that must run first in the same folder (a pretraining
whose checkpoint the config loads). ``--seeds`` runs each experiment once per seed (``seed_everything``
and the data split's seed) and reports the mean and spread; ``--section`` picks the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiments"
README = ROOT / "README.md"
TARGET = re.compile(r"^# target: (\S+) >= ([0-9.]+)\s*$", re.M)
REQUIRES = re.compile(r"^# requires: (\S+)\s*$", re.M)
COMPARISON = re.compile(r"^# comparison: (\S+)\s*$", re.M)


def target_of(name: str) -> tuple[str, float] | None:
    """The ``# target: METRIC >= VALUE`` line of an experiment config, if it has one."""
    found = TARGET.search((EXPERIMENTS / f"{name}.yaml").read_text())
    return (found.group(1), float(found.group(2))) if found else None


def requires_of(name: str) -> list[str]:
    """The experiments named by ``# requires:`` lines: they must run first, in the same folder."""
    return REQUIRES.findall((EXPERIMENTS / f"{name}.yaml").read_text())


def comparison_of(name: str) -> str | None:
    """The ``# comparison: GROUP`` a config belongs to: runs compared with each other over several seeds
    (tests/test_transfer.py), rather than one run against its target (tests/test_e2e.py)."""
    found = COMPARISON.search((EXPERIMENTS / f"{name}.yaml").read_text())
    return found.group(1) if found else None


def standalone_experiments() -> list[str]:
    """Configs with a target that run on their own: not in a ``# comparison:`` group, nor required by one."""
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    compared = {n for n in names if comparison_of(n)}
    compared |= {r for n in compared for r in requires_of(n)}
    return [n for n in names if target_of(n) and n not in compared]


def summary_of(name: str) -> str:
    """The config's first comment line: what the experiment is."""
    first = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("# ").split(";")[0].strip()


def run(name: str, workdir: Path, seed: int | None = None, done: set[str] | None = None) -> dict:
    """`zoo fit` the experiment in ``workdir`` (after what it requires, once per ``done`` set); returns
    its test metrics and wall time."""
    done = set() if done is None else done
    for required in requires_of(name):
        if required not in done:
            run(required, workdir, done=done)
    seeded = [] if seed is None else [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "fit",
            "--config",
            str(EXPERIMENTS / f"{name}.yaml"),
            "--trainer.enable_progress_bar=false",
            "--pictures=false",
            *seeded,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    done.add(name)
    return {"metrics": latest_test_metrics(name, workdir), "seconds": seconds}


def latest_test_metrics(name: str, workdir: Path) -> dict:
    """The newest ``test_metrics.json`` of an experiment's runs (its logger is named after it)."""
    found = sorted((workdir / "runs" / name).glob("*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"{name}: no runs/{name}/*/test_metrics.json; is its logger named {name!r}?")
    return json.loads(found[-1].read_text())


def run_seeds(name: str, workdir: Path, seeds: list[int], done: set[str]) -> dict:
    """One run per seed: the mean of each metric, the spread of each, the mean time."""
    runs = [run(name, workdir, seed, done) for seed in seeds]
    keys = runs[0]["metrics"]
    mean = {k: statistics.fmean(r["metrics"][k] for r in runs) for k in keys}
    spread = {k: statistics.pstdev(r["metrics"][k] for r in runs) for k in keys}
    return {"metrics": mean, "spread": spread, "seconds": statistics.fmean(r["seconds"] for r in runs), "n": len(runs)}


def best_baseline(metrics: dict[str, float], metric: str) -> str:
    """The best baseline the run scored on its own test split for ``metric`` (``test/acc`` -> ``baseline/*/acc``)."""
    short = metric.split("/", 1)[1]
    scores = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("baseline/") and k.endswith(f"/{short}")}
    if not scores:
        return "–"
    name = max(scores, key=scores.get)
    return f"{scores[name]:.3f} ({name.replace('_', ' ')})"


def table(results: dict[str, dict]) -> str:
    rows = [
        "| experiment | what | target | measured | best baseline, same split | other test metrics | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        metric, threshold = target_of(name)  # type: ignore[misc]
        metrics = result["metrics"]
        others = ", ".join(
            f"{k.split('/')[1]} {v:.3f}"
            for k, v in sorted(metrics.items())
            if k.startswith("test/") and k not in (metric, "test/loss")
        )
        measured = f"**{metrics[metric]:.3f}**"
        if "spread" in result:
            measured += f" ± {result['spread'][metric]:.3f} (mean of {result['n']} seeds)"
        rows.append(
            f"| `{name}` | {summary_of(name)} | {metric} >= {threshold} | {measured} | {best_baseline(metrics, metric)} "
            f"| {others} | {result['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiment names (default: those with a target, outside comparisons)")
    parser.add_argument("--write", action="store_true", help="rewrite the README's table")
    parser.add_argument("--seeds", type=int, nargs="+", help="run each experiment once per seed; report the mean")
    parser.add_argument("--section", default="results", help="README table between <!-- SECTION:start/end -->")
    args = parser.parse_args()
    names = args.names or standalone_experiments()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.symlink(ROOT / "configs", workdir / "configs")
        done: set[str] = set()
        for name in names:
            results[name] = run_seeds(name, workdir, args.seeds, done) if args.seeds else run(name, workdir, done=done)
            metric, _ = target_of(name)  # type: ignore[misc]
            print(f"{name}: {metric}={results[name]['metrics'][metric]:.4f} in {results[name]['seconds']:.0f} s")
    text = table(results)
    print(text)
    if args.write:
        readme = README.read_text()
        start, end = f"<!-- {args.section}:start -->", f"<!-- {args.section}:end -->"
        if start not in readme or end not in readme:
            raise SystemExit(f"README.md has no {start} ... {end} section")
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        README.write_text(f"{head}{start}\n{text}\n{end}{tail}")
        print("README.md results table rewritten")


if __name__ == "__main__":
    main()
