"""Run experiment configs as a user would and write the README's results table from what they measured.

    python scripts/results.py                      # every config in configs/experiments with a target
    python scripts/results.py digits_cnn digits_vit --write   # these, then rewrite the README table

Each experiment config states its claim in a comment line, ``# target: test/acc >= 0.97``; the
slow end-to-end tests assert the same lines, so the README, the tests and the configs cannot drift.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiments"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
TARGET = re.compile(r"^# target: (\S+) >= ([0-9.]+)\s*$", re.M)


def target_of(name: str) -> tuple[str, float] | None:
    """The ``# target: METRIC >= VALUE`` line of an experiment config, if it has one."""
    found = TARGET.search((EXPERIMENTS / f"{name}.yaml").read_text())
    return (found.group(1), float(found.group(2))) if found else None


def summary_of(name: str) -> str:
    """The config's first comment line: what the experiment is."""
    first = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("# ").split(";")[0].strip()


def run(name: str, workdir: Path) -> dict:
    """`zoo fit` the experiment in ``workdir``; returns its test metrics and wall time."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(EXPERIMENTS / f"{name}.yaml"),
         "--trainer.enable_progress_bar=false"],
        cwd=workdir, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    runs = sorted((workdir / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    metrics = json.loads((runs[-1] / "test_metrics.json").read_text())
    return {"metrics": metrics, "seconds": seconds}


def table(results: dict[str, dict]) -> str:
    rows = ["| experiment | what | target | measured | other test metrics | time |", "|---|---|---|---|---|---|"]
    for name, result in results.items():
        metric, threshold = target_of(name)  # type: ignore[misc]
        metrics = result["metrics"]
        others = ", ".join(
            f"{k.split('/')[1]} {v:.3f}" for k, v in sorted(metrics.items()) if k not in (metric, "test/loss")
        )
        rows.append(
            f"| `{name}` | {summary_of(name)} | {metric} >= {threshold} | **{metrics[metric]:.3f}** | {others} "
            f"| {result['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiment names (default: all with a target)")
    parser.add_argument("--write", action="store_true", help="rewrite the README's results table")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if target_of(p.stem))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.symlink(ROOT / "configs", workdir / "configs")
        for name in names:
            results[name] = run(name, workdir)
            metric, _ = target_of(name)  # type: ignore[misc]
            print(f"{name}: {metric}={results[name]['metrics'][metric]:.4f} in {results[name]['seconds']:.0f} s")
    text = table(results)
    print(text)
    if args.write:
        readme = README.read_text()
        if START not in readme or END not in readme:
            raise SystemExit(f"README.md has no {START} ... {END} section")
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print("README.md results table rewritten")


if __name__ == "__main__":
    main()
