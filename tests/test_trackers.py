"""MLflow and TensorBoard: a tiny `zoo fit` logs to both, and what they hold is read back the way their own tools
read it (MLflow's client on the SQLite store, TensorBoard's EventAccumulator on the event files): the resolved
config, every metric, the run's pictures, histograms of weights and gradients, the best checkpoint, all equal to
what the run folder holds. The run folder keeps the zoo's layout, so `zoo report`, resume and predict work.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT, TINY, run_zoo

DIGITS_CNN = ["fit", "--config", "configs/experiments/digits_cnn.yaml"]
GROUPS = {"backbone.stage0", "backbone.stage1", "backbone.dense", "head"}  # the digits CNN's layer groups
PICTURE_KEYS = {  # every picture RunPictures logs to a tracker, by key
    "pictures/val_confusion_matrix",
    "pictures/val_samples",
    "pictures/learning_curves",
    "pictures/learning_rate",
    "pictures/test_confusion_matrix",
    "pictures/predictions",
    "pictures/top_losses",
    "pictures/train_batch",
    "pictures/layer_stats",
}
# Both trackers in one run: MLflow first (it names the run folder), TensorBoard in runs/tb/version_0.
BOTH = {
    "trainer": {
        "logger": [
            {"class_path": "zoo.trackers.MLFlowLogger", "init_args": {"save_dir": "runs"}},
            {"class_path": "zoo.trackers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "tb"}},
        ]
    }
}


def _workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "configs").symlink_to(ROOT / "configs")
    return path


def _client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir}/runs/mlflow.db")


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _drawn(png: bytes) -> bool:
    """A picture with something on it, not one flat colour."""
    low, high = Image.open(io.BytesIO(png)).convert("L").getextrema()
    return high - low > 100


def _csv_series(run: Path, key: str, by: str = "") -> list[float]:
    """A column of the run folder's metrics.csv, in its rows that have ``key`` (``by``: another column of them)."""
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [float(row[by or key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`zoo fit` digits_cnn logging to MLflow and TensorBoard: 2 epochs of 3 steps, pictures on, tested after."""
    workdir = _workspace(tmp_path_factory.mktemp("trackers"))
    (workdir / "both.yaml").write_text(yaml.safe_dump(BOTH))
    args = [*DIGITS_CNN, "--config", "both.yaml", *TINY, "--trainer.max_epochs=2", "--pictures=true"]
    result = run_zoo(*args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = _client(workdir)
    experiment = client.get_experiment_by_name("zoo")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    folder = workdir / "runs" / "zoo" / mlflow_run.info.run_id
    return SimpleNamespace(
        workdir=workdir,
        result=result,
        client=client,
        experiment=experiment,
        run=mlflow_run,
        folder=folder,
        events=_events(workdir / "runs" / "tb" / "version_0"),
    )


# --- MLflow ----------------------------------------------------------------------------------------------------
def test_mlflow_run_holds_the_resolved_config_as_params(tracked):
    params = tracked.run.data.params
    assert params["model.class_path"] == "zoo.tasks.Classifier"
    assert params["model.init_args.optimizer.init_args.lr"] == "0.003"
    assert params["model.init_args.backbone_kwargs.channels"] == "[32, 64]"
    assert params["data.class_path"] == "datamodules.Digits"
    assert params["trainer.max_epochs"] == "2" and params["pictures"] == "true"
    assert params["checkpoint.monitor"] == "val/loss"
    assert "backbone" not in params  # Lightning's own copy of the model's arguments is left out: the config has them
    # The config file is an artifact too, the same as the run folder's.
    logged = tracked.client.download_artifacts(tracked.run.info.run_id, "config.yaml", str(tracked.workdir))
    assert yaml.safe_load(Path(logged).read_text()) == yaml.safe_load((tracked.folder / "config.yaml").read_text())
    assert tracked.run.info.status == "FINISHED"
    assert "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db" in tracked.result.stdout


def test_mlflow_run_has_every_metric_as_the_run_folder_has_it(tracked):
    client, run_id = tracked.client, tracked.run.info.run_id

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    assert len(history("train/loss_step")) == 6 and len(history("grad_norm/total")) == 6
    assert history("val/loss") == pytest.approx(_csv_series(tracked.folder, "val/loss"))
    assert {f"lr-AdamW/{g}" for g in GROUPS} <= set(tracked.run.data.metrics)
    written = json.loads((tracked.folder / "test_metrics.json").read_text())
    assert tracked.run.data.metrics["test/acc"] == pytest.approx(written["test/acc"])


def test_mlflow_artifacts_are_the_run_pictures(tracked):
    client, run_id = tracked.client, tracked.run.info.run_id
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "pictures")}
    samples = {"predictions.png", "top_losses.png", "train_batch.png", "layer_stats.png"}
    assert files == {"learning_curves.png", "learning_rate.png", "confusion_matrix.png", *samples}
    for name in ("learning_rate.png", "confusion_matrix.png"):  # drawn once: the very PNGs of the run folder
        logged = client.download_artifacts(run_id, f"pictures/{name}", str(tracked.workdir))
        assert Path(logged).read_bytes() == (tracked.folder / name).read_bytes(), name
    # Each validation's confusion matrix and samples are step images (MLflow's images/<key>+step+<n>+...png).
    stepped: dict[str, list[int]] = {}
    for info in client.list_artifacts(run_id, "images"):
        found = re.fullmatch(r"images/(.+)\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png", info.path)
        if found:
            stepped.setdefault(found[1].replace("~", "/"), []).append(int(found[2]))
            assert _drawn(Path(client.download_artifacts(run_id, info.path, str(tracked.workdir))).read_bytes())
    assert {k: sorted(v) for k, v in stepped.items()} == {
        "pictures/val_confusion_matrix": [3, 6],
        "pictures/val_samples": [3, 6],
    }


def test_mlflow_has_the_best_checkpoint_as_a_logged_model(tracked):
    client = tracked.client
    (model,) = client.search_logged_models([tracked.experiment.experiment_id])
    (best,) = (tracked.folder / "checkpoints").glob("best-*.ckpt")
    assert (model.name, model.source_run_id, str(model.status)) == (best.stem, tracked.run.info.run_id, "READY")
    assert model.tags["monitor"] == "val/loss"
    assert float(model.tags["score"]) == pytest.approx(min(_csv_series(tracked.folder, "val/loss")))
    (artifact,) = client.list_logged_model_artifacts(model.model_id)
    assert (artifact.path, artifact.file_size) == (best.name, best.stat().st_size)


def test_the_run_folder_keeps_the_zoo_layout(tracked, capsys):
    from zoo.commands.report import main as report

    folder = tracked.folder  # runs/<experiment name>/<run id>, as W&B's runs/<project>/<run id>
    assert {p.name for p in (folder / "checkpoints").iterdir()} == {
        "last.ckpt",
        *(p.name for p in folder.glob("*/best-*")),
    }
    assert {"config.yaml", "metrics.csv", "test_metrics.json"} <= {p.name for p in folder.iterdir()}
    stored = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stored["epoch"] == 1
    # metrics.csv (a CSVLogger beside the trackers) is what `zoo report` reads: it draws the run's curves.
    report([str(folder), "--output", str(tracked.workdir / "report"), "--plots", "learning_curves", "learning_rate"])
    assert {p.name for p in (tracked.workdir / "report").iterdir()} == {"learning_curves.png", "learning_rate.png"}


# --- TensorBoard -----------------------------------------------------------------------------------------------
def test_tensorboard_has_the_scalars_as_the_run_folder_has_them(tracked):
    events = tracked.events
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx(_csv_series(tracked.folder, "val/loss"))
    assert len(events.Scalars("train/loss_step")) == 6
    assert {"grad_norm/total", "test/acc", *(f"lr-AdamW/{g}" for g in GROUPS)} <= set(events.Tags()["scalars"])
    assert "hp_metric" not in events.Tags()["scalars"]  # no placeholder: the run's own scalars are the metrics


def test_tensorboard_has_the_config_as_hyperparameters_and_text(tracked):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tracked.events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model.init_args.optimizer.init_args.lr"].number_value == pytest.approx(0.003)
    assert hparams["model.init_args.backbone"].string_value == "cnn"
    assert hparams["model.init_args.backbone_kwargs.channels"].string_value == "[32, 64]"
    assert hparams["trainer.max_epochs"].number_value == 2
    (text,) = tracked.events.Tensors("config/text_summary")
    assert "backbone: cnn" in text.tensor_proto.string_val[0].decode()


def test_tensorboard_has_the_same_pictures_as_images(tracked):
    events = tracked.events
    assert set(events.Tags()["images"]) == PICTURE_KEYS
    assert [e.step for e in events.Images("pictures/val_samples")] == [3, 6]  # after each validation
    for key in PICTURE_KEYS:
        for image in events.Images(key):
            assert _drawn(image.encoded_image_string), key


def test_tensorboard_has_histograms_of_weights_and_gradients_each_epoch(tracked):
    events = tracked.events
    state = torch.load(tracked.folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tags = events.Tags()["histograms"]
    weights = {t.removeprefix("weights/") for t in tags if t.startswith("weights/")}
    gradients = {t.removeprefix("gradients/") for t in tags if t.startswith("gradients/")}
    assert weights == gradients and len(weights) >= 8  # every parameter: none is frozen
    for name in weights:
        numel = state["state_dict"][name].numel()
        for kind in ("weights", "gradients"):
            logged = events.Histograms(f"{kind}/{name}")
            assert [e.step for e in logged] == [2, 5], name  # the last step of each epoch, before its update
            assert all(e.histogram_value.num == numel for e in logged), name
        gradient = events.Histograms(f"gradients/{name}")[-1].histogram_value
        assert gradient.max > gradient.min and gradient.sum_squares > 0, name  # real gradients, not zeros


# --- without a run ---------------------------------------------------------------------------------------------
def test_mlflow_logs_the_diagnosis_and_a_continued_run_keeps_its_params(tmp_path: Path):
    from zoo.trackers import MLFlowLogger

    logger = MLFlowLogger(save_dir=str(tmp_path / "runs"))
    logger.log_resolved_config("trainer:\n  max_epochs: 2\nmodel:\n  lr: 0.1\n  layers: [2, 3]\n")
    folder = tmp_path / "runs" / "zoo" / logger.run_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "diagnosis.json").write_text('{"findings": [{"name": "learning rate too high"}]}\n')
    checkpoint = SimpleNamespace(dirpath=str(folder / "checkpoints"), best_model_path="", last_model_path="")
    logger.after_save_checkpoint(checkpoint)
    logger.finalize("success")
    client = _client(tmp_path)
    assert [f.path for f in client.list_artifacts(logger.run_id)] == ["config.yaml", "diagnosis.json"]
    # A run continued by id keeps its params (MLflow refuses to change one), adds the new ones, and says so.
    again = MLFlowLogger(save_dir=str(tmp_path / "runs"), run_id=logger.run_id)
    with pytest.warns(UserWarning, match=r"keeps its first values of trainer\.max_epochs"):
        again.log_resolved_config("trainer:\n  max_epochs: 3\n  precision: null\nmodel:\n  lr: 0.1\n")
    params = client.get_run(logger.run_id).data.params
    assert params == {
        "trainer.max_epochs": "2",
        "trainer.precision": "null",
        "model.lr": "0.1",
        "model.layers": "[2, 3]",
    }


def test_a_logger_without_its_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from zoo.errors import ConfigError
    from zoo.trackers import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"TensorBoard logger needs the tensorboard package.*pip install tensorboard"):
        TensorBoardLogger(save_dir=str(tmp_path))
    # From the command line: one message and exit code 2, before any training.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None\n")
    workdir = _workspace(tmp_path / "work")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = run_zoo(
        *DIGITS_CNN, "--trainer.logger", "configs/logger/mlflow.yaml", *TINY, cwd=workdir, env=env, fresh=True
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the MLflow logger needs the mlflow package, which is not installed: pip install mlflow" in result.stderr
    assert not (workdir / "runs").exists()


def test_importing_the_zoo_and_its_cli_loads_no_tracker_library():
    code = (
        "import sys, zoo, zoo.lightning_cli, zoo.trackers; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mlflow', 'tensorboard', 'tensorboardX') or m.startswith('torch.utils.tensorboard')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_flat_config_keeps_numbers_and_writes_the_rest_as_yaml_says_it():
    from zoo.trackers import flat_config

    config = {"a": {"b": 1, "c": 0.5, "d": True, "e": None, "f": [1, 2], "g": "x", "h": {}}, "i": [{"j": 1}]}
    assert flat_config(config) == {
        "a.b": 1,
        "a.c": 0.5,
        "a.d": "true",
        "a.e": "null",
        "a.f": "[1, 2]",
        "a.g": "x",
        "a.h": "{}",
        "i": '[{"j": 1}]',
    }


def test_resume_looks_for_an_mlflow_runs_checkpoints_under_its_experiment_name(tmp_path: Path):
    from zoo.resume import checkpoint_folders

    (tmp_path / "exp" / "0123abcd" / "checkpoints").mkdir(parents=True)
    logger = {
        "class_path": "zoo.trackers.MLFlowLogger",
        "init_args": {"save_dir": str(tmp_path), "experiment_name": "exp"},
    }
    folders, where = checkpoint_folders({"trainer": {"logger": logger}})
    assert folders == [tmp_path / "exp" / "0123abcd" / "checkpoints"] and where == f"{tmp_path / 'exp'}/*/checkpoints/"
    del logger["init_args"]["experiment_name"]  # the default, "zoo"
    assert checkpoint_folders({"trainer": {"logger": logger}})[1] == f"{tmp_path / 'zoo'}/*/checkpoints/"


# --- each tracker alone, resumed and predicted from (slow) -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("logger", ["mlflow", "tensorboard"])
def test_a_run_alone_resumes_from_its_last_checkpoint_and_predicts(logger: str, workdir: Path):
    args = [*DIGITS_CNN, "--trainer.logger", f"configs/logger/{logger}.yaml", *TINY]
    first = run_zoo(*args, cwd=workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_zoo(*args, "--trainer.max_epochs=2", "--ckpt_path", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (was, now) = sorted((workdir / "runs" / "zoo").iterdir(), key=lambda p: p.stat().st_mtime)
    assert f"resuming from {was.relative_to(workdir)}/checkpoints/last.ckpt" in resumed.stderr
    # A new run (and run folder) that goes on from the first: epoch 1 only, with the zoo's layout.
    assert set(_csv_series(now, "train/loss", by="epoch")) == {1.0}
    assert {"config.yaml", "metrics.csv", "test_metrics.json", "checkpoints"} <= {p.name for p in now.iterdir()}
    if logger == "tensorboard":
        assert [e.step for e in _events(now).Scalars("val/loss")] == [5]  # the event files are in the run folder
    else:
        runs = _client(workdir).search_runs([_client(workdir).get_experiment_by_name("zoo").experiment_id])
        assert {r.info.run_id for r in runs} == {was.name, now.name}
    (best,) = (now / "checkpoints").glob("best-*.ckpt")
    digits = ROOT / "examples" / "digits"
    predicted = run_zoo("predict", "--ckpt_path", str(best), str(digits), "--output", "predictions.csv", cwd=workdir)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = (workdir / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list(digits.glob("*.png")))
    assert np.isfinite([float(r.split(",")[2]) for r in rows[1:]]).all()
