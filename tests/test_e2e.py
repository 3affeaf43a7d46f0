"""End to end: each experiment config trains from the command line and reaches its stated target.

A config states its claim as ``# target: METRIC >= VALUE``; the README's results table is written from
the same runs by ``scripts/results.py``. These tests run `zoo fit` in a subprocess exactly as a user would.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_zoo
from tests.test_diagnose import problems_in

_spec = importlib.util.spec_from_file_location("results", ROOT / "scripts" / "results.py")
results = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(results)  # type: ignore[union-attr]

# Configs of a `# comparison:` group, and the pretrainings they require, run in tests/test_transfer.py.
EXPERIMENTS = results.standalone_experiments()


def test_every_experiment_states_a_target() -> None:
    missing = [p.stem for p in (ROOT / "configs" / "experiments").glob("*.yaml") if not results.target_of(p.stem)]
    assert not missing, f"experiment configs without a '# target: METRIC >= VALUE' line: {missing}"


@pytest.fixture(scope="session")
def pretrained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Experiments that others require (``# requires:``), each run once per session: name -> its run folder."""
    return {}


def _provide_requirements(experiment: str, workdir: Path, cache: dict[str, Path], tmp: Path) -> None:
    for required in results.requires_of(experiment):
        if required not in cache:
            home = tmp / required
            home.mkdir()
            (home / "configs").symlink_to(ROOT / "configs")
            _provide_requirements(required, home, cache, tmp)
            done = run_zoo(
                "fit",
                "--config",
                f"configs/experiments/{required}.yaml",
                "--trainer.enable_progress_bar=false",
                "--pictures=false",
                cwd=home,
                timeout=900,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            cache[required] = home / "runs" / required
        (workdir / "runs").mkdir(exist_ok=True)
        (workdir / "runs" / required).symlink_to(cache[required])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_reaches_its_target(
    experiment: str, workdir: Path, pretrained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    metric, threshold = results.target_of(experiment)
    _provide_requirements(experiment, workdir, pretrained_runs, tmp_path_factory.mktemp("required"))
    start = time.perf_counter()
    result = run_zoo(
        "fit",
        "--config",
        f"configs/experiments/{experiment}.yaml",
        "--trainer.enable_progress_bar=false",
        "--pictures=false",
        cwd=workdir,
        timeout=900,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = results.latest_test_metrics(experiment, workdir)
    print(f"{experiment}: {metric}={metrics[metric]:.4f} in {elapsed:.0f} s")
    # Wall time is reported, not asserted: this machine is shared, and timings belong in benchmarks/.
    assert metrics[metric] >= threshold, f"{experiment}: {metric}={metrics[metric]:.4f} < {threshold}"
    # No false alarm: the diagnosis at the end of the fit finds no problem in a recipe that reaches its target.
    problems = problems_in(workdir / "runs" / experiment)
    assert not problems, f"{experiment}: the diagnosis finds problems in a healthy run: {problems}"
