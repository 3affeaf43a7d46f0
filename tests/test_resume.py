"""`--ckpt_path last` resumes this config's own run and nothing else, from wherever a kill or SIGTERM left it
(mid-validation too), and what killed writes leave behind is cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, run_zoo
from tests.test_cli import error_of, zoo
from tests.test_reliability import CKPTS, RUN, assert_same_weights, probe, weights
from zoo.checkpoints import read_checkpoint
from zoo.resume import checkpoint_folders

MLP = ["--config", "configs/experiments/digits_mlp.yaml", *TINY]
CNN = ["--config", "configs/experiments/digits_cnn.yaml", *TINY]


def test_last_with_no_run_of_this_config_starts_fresh_even_beside_other_experiments(workdir: Path, capsys):
    zoo("fit", *MLP)
    capsys.readouterr()
    zoo("fit", *CNN, "--ckpt_path=last")
    assert "no checkpoint of this config in runs/digits_cnn/*/checkpoints/ yet, starting a fresh run" in (
        capsys.readouterr().err
    )
    ckpt = read_checkpoint(str(workdir / "runs/digits_cnn/version_0/checkpoints/last.ckpt"))
    assert ckpt["hyper_parameters"]["backbone"] == "cnn" and ckpt["global_step"] == 3  # its own 3 steps, no more


def test_a_checkpoint_of_another_experiment_is_refused_naming_both(workdir: Path, capsys):
    zoo("fit", *MLP)
    mlp = workdir / "runs/digits_mlp/version_0/checkpoints/last.ckpt"
    err = error_of(capsys, "fit", *CNN, f"--ckpt_path={mlp}")
    assert "it was trained with backbone mlp, this config has backbone cnn" in err
    tabular = ["--config", "configs/experiments/breast_cancer_mlp.yaml", *TINY]
    err = error_of(capsys, "fit", *tabular, f"--ckpt_path={mlp}")
    assert "data datamodules.Digits, this config has data datamodules.SklearnTabular" in err
    assert not (workdir / "runs/digits_cnn").exists()


@pytest.mark.parametrize(
    ("logger", "folder"),
    [
        ({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "out"}}, "out/lightning_logs"),
        ({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "out", "name": None}}, "out"),
        ({"class_path": "zoo.loggers.WandbLogger", "init_args": {"name": "digits_mlp"}}, "runs/zoo"),  # the project
        (True, "runs/lightning_logs"),
    ],
    ids=["csv_default_name", "csv_no_name", "wandb_project", "default_logger"],
)
def test_last_looks_where_lightning_writes_this_configs_checkpoints(tmp_path: Path, monkeypatch, logger, folder):
    monkeypatch.chdir(tmp_path)
    for run in (f"{folder}/version_0", f"{folder}/other_experiment/version_0", "runs/digits_mlp/version_0"):
        (tmp_path / run / "checkpoints").mkdir(parents=True)
    found, _ = checkpoint_folders({"trainer": {"logger": logger}})
    assert found == [Path(folder) / "version_0/checkpoints"]
    assert checkpoint_folders({"trainer": {"logger": None}})[0] == [Path("runs/checkpoints")]


def test_experiments_sharing_a_folder_resume_only_their_own(workdir: Path, capsys):
    zoo("fit", *MLP, "--trainer.logger=false")  # no logger: every experiment's checkpoints in runs/checkpoints
    capsys.readouterr()
    zoo("fit", *CNN, "--trainer.logger=false", "--ckpt_path=last")
    assert "passing over 1 checkpoint(s) of other experiments or unreadable), starting a fresh run" in (
        capsys.readouterr().err
    )
    zoo("fit", *CNN, "--trainer.logger=false", "--ckpt_path=last", "--trainer.max_epochs=2")
    resumed = capsys.readouterr().err
    assert (
        "resuming from runs/checkpoints/last-v1.ckpt" in resumed
        or "resuming from runs/checkpoints/last.ckpt" in resumed
    )


def test_last_holds_the_steps_after_the_last_validation(workdir: Path):
    # Validation after 2 of each epoch's 3 steps: the third step is in last.ckpt all the same.
    zoo("fit", *MLP, "--trainer.val_check_interval=2", "--trainer.max_epochs=2")
    last = read_checkpoint(str(workdir / CKPTS.format(0) / "last.ckpt"))
    assert last["global_step"] == 6
    zoo("fit", *MLP, "--trainer.check_val_every_n_epoch=5", "--trainer.max_epochs=2")  # no validation at all
    assert read_checkpoint(str(workdir / CKPTS.format(1) / "last.ckpt"))["global_step"] == 6


def test_last_falls_back_to_a_best_checkpoint_and_killed_writes_are_cleaned_up(workdir: Path, capsys):
    zoo("fit", *MLP)
    ckpts = workdir / CKPTS.format(0)
    (ckpts / "last.ckpt").unlink()  # killed after its best checkpoint, before last.ckpt
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = ckpts / f".last.ckpt.partial-{dead.stdout.strip()}"
    stale.write_bytes(b"\0" * 1024)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        live = ckpts / f".best.ckpt.partial-{writer.pid}"  # another run of this experiment, still writing
        live.write_bytes(b"\0" * 1024)
        capsys.readouterr()
        zoo("fit", *MLP, "--ckpt_path=last", "--trainer.max_epochs=2")
        writer.kill()
    err = capsys.readouterr().err
    assert f"resuming from {CKPTS.format(0)}/best-epoch=0-step=3.ckpt" in err
    assert "removed 1 partial checkpoint file(s)" in err
    assert not stale.exists() and live.exists()
    assert read_checkpoint(str(workdir / CKPTS.format(1) / "last.ckpt"))["global_step"] == 6


# --- SIGTERM during validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("epoch", "batch"),
    [pytest.param(0, 0, marks=pytest.mark.slow), (1, 1), pytest.param(2, 2, marks=pytest.mark.slow)],
    ids=["first_batch", "mid", "last_batch"],
)
def test_sigterm_during_validation_resumes_redoing_it(workdir: Path, epoch, batch):
    run = [*RUN, "--trainer.limit_val_batches=3"]
    assert run_zoo("fit", *run, cwd=workdir).returncode == 0
    stopped = run_zoo(
        "fit", *run, *probe("SignalAt", epoch=epoch, batch=batch, signal="TERM", stage="val"), cwd=workdir
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    resumed = run_zoo("fit", *run, "--ckpt_path=last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(
        weights(workdir / CKPTS.format(2) / "last.ckpt"), weights(workdir / CKPTS.format(0) / "last.ckpt")
    )
    # The interrupted validation was run again in full (or, stopped at its last batch, finished before the stop):
    # every epoch has the uninterrupted run's val/loss.
    val = [_val_losses(workdir / CKPTS.format(v) / "../metrics.csv") for v in (0, 1, 2)]
    assert {**val[1], **val[2]} == val[0]
    best = [p.name for p in (workdir / CKPTS.format(2)).iterdir() if p.name.startswith("best")]
    assert best == [p.name for p in (workdir / CKPTS.format(0)).iterdir() if p.name.startswith("best")]


def _val_losses(metrics_csv: Path) -> dict[int, str]:
    import csv

    with open(metrics_csv) as f:
        return {int(row["epoch"]): row["val/loss"] for row in csv.DictReader(f) if row.get("val/loss")}
