"""The forked `zoo` runs of the suite (tests/forked.py) say and do what a fresh interpreter does."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import TINY, run_zoo


def _lines(text: str) -> set[str]:
    """Lines without what differs between any two runs: numbers (times, speeds, scores) and bar widths."""
    text = re.sub(r"━+", "━", re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text))
    return {line.strip() for line in text.splitlines() if line.strip()}


def _both(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple:
    runs = []
    for fresh in (True, False):
        shutil.rmtree(cwd / "runs", ignore_errors=True)
        runs.append(run_zoo(*args, cwd=cwd, env=env, fresh=fresh))
    return tuple(runs)


def test_a_forked_fit_prints_and_writes_what_a_fresh_interpreter_does(workdir: Path) -> None:
    shown = ["--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true"]
    fresh, forked = _both(workdir, "fit", "--config", "configs/experiments/digits_mlp.yaml", *TINY, *shown)
    assert fresh.returncode == forked.returncode == 0, forked.stderr
    # Lightning's INFO lines, the zoo's log lines, warnings and the Rich tables all reach the same stream.
    assert "GPU available" in forked.stderr and "budget:" in forked.stderr and "Trainable params" in forked.stdout
    assert _lines(forked.stdout) == _lines(fresh.stdout)
    assert _lines(forked.stderr) == _lines(fresh.stderr)
    assert json.loads((workdir / "runs/digits_mlp/version_0/test_metrics.json").read_text())["test/acc"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--config", "missing.yaml"],
        ["fit", "--config", "configs/experiments/digits_mlp.yaml", "--model.lr=-1"],
    ],
    ids=["missing_config", "bad_value"],
)
def test_a_forked_error_exits_and_says_what_a_fresh_interpreter_does(workdir: Path, args: list[str]) -> None:
    fresh, forked = _both(workdir, *args, *TINY)
    assert forked.returncode == fresh.returncode == 2
    assert forked.stderr == fresh.stderr and forked.stdout == fresh.stdout


def test_pythonpath_reaches_the_forked_run_and_the_test_process_path_does_not(workdir: Path) -> None:
    (workdir / "pkg").mkdir()
    (workdir / "pkg/probe_path.py").write_text("import sys\nprint('PATH', sys.path[:2])\n")
    task = "class_path: zoo.tasks.Classifier\n  init_args:\n    backbone: probe_path.Nothing"
    (workdir / "probe.yaml").write_text(f"model:\n  {task}\ndata:\n  class_path: datamodules.Digits\n")
    fresh, forked = _both(workdir, "fit", "--config", "probe.yaml", *TINY, env={"PYTHONPATH": str(workdir / "pkg")})
    # The script's folder first, then PYTHONPATH: nothing of the test process (its rootdir, its tests/) before.
    assert f"PATH ['{Path(__file__).parents[1]}', '{workdir / 'pkg'}']" in forked.stdout
    assert forked.stdout == fresh.stdout and forked.stderr == fresh.stderr
    assert forked.returncode == fresh.returncode == 2


def test_a_process_that_imported_a_tracker_starts_fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.forked import can_fork

    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    assert can_fork()
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))  # its cached stores would be inherited
    assert not can_fork()
