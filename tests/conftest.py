"""Shared fixtures: every test runs offline, in its own working directory, with tiny CPU settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

# Set before torch loads (and inherited by the `zoo` subprocesses): on a shared 2-core machine,
# OpenMP threads that spin while waiting made training steps 10-25x slower under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread per process: the suite runs on two workers (xdist), each of which starts `zoo` subprocesses; with
# torch's default of a thread per core, four or more threads would contend for the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A shell starts background jobs with Ctrl-C ignored, and an ignored signal stays ignored in every process they
# start: the `zoo` subprocesses of the Ctrl-C tests would then train on. A handler here is reset at their exec.
signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.forked import can_fork, run_forked  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_STARTUP_ENV = frozenset(os.environ)

# Nothing may reach a hub during tests; W&B never needs an account.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Appended to CLI calls: one small epoch, no progress bar or summary, so a CLI test takes seconds.
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--pictures=false",  # drawing costs ~1 s a run; tests/test_report.py checks the pictures
    "--baseline=false",  # fitting baselines costs up to seconds a run; tests/test_baselines.py checks them
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (runs/ and data/ land here), with the repo's configs reachable."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return tmp_path


def run_zoo(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run `python cli.py ARGS` as a user would, in a process of its own; returns the finished process.

    The process is forked from this one, which has imported Lightning once (tests/forked.py says what it
    resets); ``fresh=True`` or ``ZOO_TEST_FRESH=1`` starts a new interpreter instead, as does a test process that
    has imported a tracker library (``forked.can_fork``).
    """
    # MLflow sets MLFLOW_TRACKING_URI in the process that logged to it (a test's in-process run): not the user's.
    leaked = {k for k in os.environ if k.startswith("MLFLOW_") and k not in _STARTUP_ENV}
    full_env = {**{k: v for k, v in os.environ.items() if k not in leaked}, **(env or {})}
    if not fresh and os.environ.get("ZOO_TEST_FRESH") != "1" and can_fork():
        return run_forked(ROOT / "cli.py", list(args), cwd=Path(cwd), env=full_env, timeout=timeout)
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Under feature_loss every parameter of every backbone gets a gradient of at least ~4e-3 somewhere; float32
# rounding noise is ~1e-7 of the values. A gradient below this floor is no evidence the parameter is reached.
GRAD_FLOOR = 1e-4


def feature_loss(features: torch.Tensor) -> torch.Tensor:
    """A scalar every feature moves, for checking that gradients reach a backbone: a fixed random projection.

    Not ``features.pow(2).mean()`` or ``.sum()``: after a final LayerNorm those are constant (up to the norm's
    eps), so their gradients are rounding noise, ~1e-8 for the ViTs and the class-token transformer.
    """
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(0), dtype=features.dtype)
    return (features * weights.to(features.device)).sum()


def tiny_fit(factory: pytest.TempPathFactory, experiment: str) -> Path:
    """The working directory of one tiny `zoo fit` of ``configs/experiments/<experiment>.yaml`` (its run in
    ``runs/<experiment>/version_0``), for a module-scoped fixture: a real checkpoint, config and metrics."""
    cwd = factory.mktemp(experiment)
    (cwd / "configs").symlink_to(ROOT / "configs")
    done = run_zoo("fit", "--config", f"configs/experiments/{experiment}.yaml", *TINY, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd
