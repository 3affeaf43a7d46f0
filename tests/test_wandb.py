"""Weights & Biases without an account: runs are logged offline and read back from their ``.wandb`` record
files (tests/wandb_records.py), so these tests check what W&B would receive: the resolved config, metrics,
per-group learning rates, gradient norms, pictures, checkpoints as artifacts, and one run across a resume.
One run under DDP is checked in tests/test_distributed.py.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT, TINY, run_zoo
from tests.wandb_records import OfflineRun, offline_runs

NO_LOGIN = {"WANDB_API_KEY": "", "WANDB_MODE": ""}  # with HOME set to the test's folder: no netrc, no key
DIGITS_CNN = ["fit", "--config", "configs/experiments/digits_cnn.yaml", "--trainer.logger", "configs/logger/wandb.yaml"]


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(workdir), **NO_LOGIN, **extra}


def _checkpoints(workdir: Path, run: OfflineRun) -> Path:
    """The run's checkpoint folder: ``<save_dir>/<project>/<run id>/checkpoints`` with a W&B logger."""
    return workdir / "runs" / "zoo" / run.id / "checkpoints"


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`zoo fit` digits_cnn with the W&B logger and no login: 2 epochs of 3 steps, pictures on, tested after."""
    workdir = tmp_path_factory.mktemp("wandb")
    (workdir / "configs").symlink_to(ROOT / "configs")
    result = run_zoo(*DIGITS_CNN, *TINY, "--trainer.max_epochs=2", "--pictures=true", cwd=workdir, env=_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = offline_runs(workdir / "runs")
    return SimpleNamespace(workdir=workdir, result=result, run=run)


def test_offline_run_prints_its_sync_command_and_holds_the_resolved_config(wandb_run):
    run = wandb_run.run
    assert f"wandb sync runs/wandb/{run.folder.name}\n" in wandb_run.result.stdout
    # The CLI's resolved config, nested as in the YAML (defaults filled in), is the run's config.
    assert run.config["model"]["class_path"] == "zoo.tasks.Classifier"
    assert run.config["model"]["init_args"]["backbone_kwargs"]["channels"] == [32, 64]
    assert run.config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.003
    assert run.config["data"]["class_path"] == "datamodules.Digits"
    assert run.config["trainer"]["max_epochs"] == 2
    assert run.config["checkpoint"]["monitor"] == "val/loss"


def test_run_logs_metrics_learning_rates_per_group_and_gradient_norms(wandb_run):
    run = wandb_run.run
    assert len(run.series("train/loss_step")) == 6  # 2 epochs x 3 steps, log_every_n_steps=1
    assert len(run.series("val/loss")) == len(run.series("val/acc")) == 2
    # One learning rate per optimizer group (LearningRateMonitor), each the configured 0.003.
    groups = {"backbone.stage0", "backbone.stage1", "backbone.dense", "head"}
    lr_keys = {k for k in run.keys() if k.startswith("lr-AdamW/")}
    assert lr_keys == {f"lr-AdamW/{g}{kind}" for g in groups for kind in ("", ".no_decay")}
    assert all(value == pytest.approx(0.003) for key in lr_keys for value in run.series(key))
    # Gradient norms (zoo.callbacks.monitoring.GradNormMonitor, on by default with a logger): every step.
    norms = run.series("grad_norm/total")
    assert len(norms) == 6 and all(math.isfinite(n) and n > 0 for n in norms)
    assert {f"grad_norm/{g}" for g in groups} <= run.keys()
    # The test after fit reaches the run too, with the values written to test_metrics.json.
    written = json.loads((_checkpoints(wandb_run.workdir, run).parent / "test_metrics.json").read_text())
    assert run.summary["test/acc"] == pytest.approx(written["test/acc"])


def test_run_gets_histograms_each_epoch_and_its_folder_a_metrics_csv(wandb_run):
    run = wandb_run.run
    weights = {k.removeprefix("weights/") for k in run.keys() if k.startswith("weights/")}
    gradients = {k.removeprefix("gradients/") for k in run.keys() if k.startswith("gradients/")}
    assert weights == gradients and "head.fc.weight" in weights  # every parameter (zoo.trackers.log_histograms)
    for name in weights:
        logged = run.series(f"gradients/{name}")
        assert len(logged) == 2 and all(h["_type"] == "histogram" and sum(h["values"]) > 0 for h in logged), name
    # The run folder has the metrics as the CSV logger writes them (zoo.run.files.MetricsInRunFolder): `zoo report`
    # reads a W&B run's folder as any other.
    folder = _checkpoints(wandb_run.workdir, run).parent
    with open(folder / "metrics.csv", newline="") as f:
        csv_loss = [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]
    assert csv_loss == pytest.approx(run.series("val/loss"))


def _picture(run: OfflineRun, value: dict) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    (filename,) = value["filenames"]
    image = Image.open(run.folder / "files" / filename)
    assert image.size == (value["width"], value["height"])
    return image


def test_run_shows_a_confusion_matrix_and_sample_predictions_after_each_validation(wandb_run):
    run = wandb_run.run
    for key in ("pictures/val_confusion_matrix", "pictures/val_samples"):
        logged = run.series(key)
        assert len(logged) == 2, key  # one per validation epoch (not for the sanity check)
        for value in logged:
            image = _picture(run, value).convert("L")
            low, high = image.getextrema()
            assert high - low > 100, key  # a drawing, not a blank canvas
    # Samples are drawn as a row of 8 digits: a wide panel.
    samples = run.series("pictures/val_samples")[0]
    assert samples["width"] > 3 * samples["height"]
    assert len(run.series("pictures/test_confusion_matrix")) == 1
    assert len(run.series("pictures/learning_curves")) == 1


def test_checkpoints_store_the_run_id(wandb_run):
    ckpts = sorted(_checkpoints(wandb_run.workdir, wandb_run.run).glob("*.ckpt"))
    assert len(ckpts) == 2
    for path in ckpts:
        assert torch.load(path, map_location="cpu", weights_only=True)["wandb_run_id"] == wandb_run.run.id


def test_resumed_fit_continues_the_same_wandb_run(wandb_run, workdir: Path):
    shutil.copytree(wandb_run.workdir / "runs", workdir / "runs")
    last = _checkpoints(workdir, wandb_run.run) / "last.ckpt"
    result = run_zoo(
        *DIGITS_CNN,
        *TINY,
        "--trainer.max_epochs=3",
        "--ckpt_path",
        str(last.relative_to(workdir)),
        cwd=workdir,
        env=_env(workdir),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"W&B: continuing run {wandb_run.run.id}" in result.stderr
    first, resumed = offline_runs(workdir / "runs")
    assert resumed.id == first.id == wandb_run.run.id
    # The resumed run goes on where the checkpoint stopped: epoch 2, steps after the first run's.
    assert {row["epoch"] for row in resumed.history if "train/loss_step" in row} == {2}
    assert min(resumed.series("trainer/global_step")) >= max(first.series("trainer/global_step"))
    # Offline, each process that logged the run has a folder: the hint uploads both, oldest first.
    assert f"wandb sync runs/wandb/{first.folder.name} runs/wandb/{resumed.folder.name}\n" in result.stdout
    stored = torch.load(last, map_location="cpu", weights_only=True)
    assert (stored["epoch"], stored["wandb_run_id"]) == (2, first.id)


def test_an_explicit_run_id_or_a_csv_logger_is_left_alone(tmp_path: Path):
    from jsonargparse import Namespace

    from zoo.loggers import continue_stored_run

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "wandb_run_id": "abc123"}, ckpt)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)

    def config(*loggers: tuple[str, dict], ckpt_path: str = str(ckpt)) -> Namespace:
        made = [Namespace(class_path=cls, init_args=Namespace(**args)) for cls, args in loggers]
        return Namespace(ckpt_path=ckpt_path, trainer=Namespace(logger=made[0] if len(made) == 1 else made))

    wandb, csv = "zoo.loggers.WandbLogger", "lightning.pytorch.loggers.CSVLogger"
    resumed = config((csv, {"save_dir": "runs"}), (wandb, {"project": "zoo", "id": None}))
    assert continue_stored_run(resumed) == "abc123"
    assert resumed.trainer.logger[1].init_args.id == "abc123"
    assert "id" not in resumed.trainer.logger[0].init_args
    lightnings = config(("lightning.pytorch.loggers.WandbLogger", {"version": None}))
    assert continue_stored_run(lightnings) == "abc123" and lightnings.trainer.logger.init_args.id == "abc123"
    named = config((wandb, {"id": "mine"}))
    assert continue_stored_run(named) is None and named.trainer.logger.init_args.id == "mine"
    for untouched in (
        config((csv, {"save_dir": "runs"})),
        config((wandb, {"id": None}), ckpt_path=str(plain)),
        config((wandb, {"id": None}), ckpt_path="last"),
    ):
        assert continue_stored_run(untouched) is None
        assert untouched.trainer.logger.init_args.get("id") is None


def test_log_model_uploads_the_best_checkpoint_as_a_model_artifact(workdir: Path):
    # An online run records artifacts as an offline one does (uploaded by `wandb sync`); WANDB_MODE=offline
    # keeps this run local while the logger runs its online path (offline=False: log_model is on).
    online = ["--trainer.logger.init_args.offline=false", "--trainer.logger.init_args.log_model=true"]
    result = run_zoo(
        *DIGITS_CNN,
        *TINY,
        "--trainer.max_epochs=2",
        "--test_after_fit=false",
        *online,
        cwd=workdir,
        env=_env(workdir, WANDB_MODE="offline"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = offline_runs(workdir / "runs")
    # The checkpoints' model, and the table of the diagnosis at the end of the fit (zoo.run.outputs.log_findings).
    diagnosis = ("run_table", f"run-{run.id}-diagnosis")
    assert {(a.type, a.name) for a in run.artifacts} == {("model", f"model-{run.id}"), diagnosis}
    (best,) = [a for a in run.artifacts if "best" in a.aliases]
    metadata = json.loads(best.metadata)
    best_file = _checkpoints(workdir, run) / metadata["original_filename"]
    assert best_file.name.startswith("best-epoch=")
    assert metadata["score"] == pytest.approx(min(run.series("val/loss")))  # the monitored value of the best
    assert [c.size for c in best.manifest.contents] == [best_file.stat().st_size]


def test_log_model_is_passed_on_and_dropped_with_a_warning_offline(tmp_path: Path):
    from zoo.loggers import WandbLogger

    assert WandbLogger(save_dir=str(tmp_path), offline=False, log_model="all")._log_model == "all"
    assert WandbLogger(save_dir=str(tmp_path), offline=False, log_model=True)._log_model is True
    with pytest.warns(UserWarning, match="offline: log_model=True is ignored"):
        assert WandbLogger(save_dir=str(tmp_path), offline=True, log_model=True)._log_model is False


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
