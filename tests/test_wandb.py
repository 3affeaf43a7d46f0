"""Weights & Biases without an account: the run is logged offline, with the resolved config and a sync hint."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY, run_zoo


def test_wandb_without_login_logs_offline_and_prints_sync_command(workdir: Path) -> None:
    env = {"HOME": str(workdir), "WANDB_API_KEY": "", "WANDB_MODE": ""}  # no netrc, no key: not logged in
    result = run_zoo(
        "fit", "--config", "configs/experiments/breast_cancer_mlp.yaml",
        "--trainer.logger", "configs/logger/wandb.yaml", *TINY, cwd=workdir, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((workdir / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert f"wandb sync runs/wandb/{runs[0].name}" in result.stdout
    # The resolved CLI config is the run's config: the datamodule's class path is in the run record.
    record = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"datamodules.SklearnTabular" in record and b"breast_cancer" in record
    assert b"test/acc" in record


def test_wandb_logger_is_offline_exactly_when_not_logged_in(monkeypatch, tmp_path: Path) -> None:
    from zoo.loggers import wandb_logged_in

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_logged_in()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_logged_in()
    monkeypatch.setenv("HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_logged_in()
