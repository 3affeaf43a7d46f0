"""`zoo report` and the RunPictures callback: the pictures of a real tiny run, the test confusion matrix
they are drawn from, the learning-rate lines per optimizer group, the samples of highest loss, W&B images, and the
errors a user meets."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import main as zoo_main
from tests.conftest import ROOT, TINY, run_zoo
from zoo.commands.report import main as report
from zoo.errors import ZooError
from zoo.plots import plot_learning_curves, plot_learning_rates, read_metrics_csv

PICTURES = ["--trainer.callbacks+=zoo.callbacks.pictures.RunPictures"]  # until cli.py adds it by default
SAMPLE_PNGS = ("predictions.png", "top_losses.png", "train_batch.png")
PNGS = ("learning_curves.png", "learning_rate.png", "confusion_matrix.png", *SAMPLE_PNGS, "layer_stats.png")
DIGITS_GROUPS = ["backbone.stage0", "backbone.stage1", "backbone.dense", "head"]  # the CNN's, stem to top


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "configs").symlink_to(ROOT / "configs")
    return root


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3-epoch digits CNN run with RunPictures, tested on the whole test split (360 images)."""
    cwd = _workspace(tmp_path_factory.mktemp("digits"))
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        *TINY,
        "--trainer.max_epochs=3",
        "--trainer.limit_test_batches=1.0",
        *PICTURES,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "runs" / "digits_cnn" / "version_0"


def _test_set_size() -> int:
    from datamodules import Digits

    data = Digits(val_split=0.1, test_split=0.2, seed=42)  # the experiment's splits
    data.setup("test")
    return len(data.test_set)


def _assert_picture(path: Path) -> None:
    """A real PNG of a reasonable size with something drawn on it (not one flat colour)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert 400 <= width <= 4000 and 300 <= height <= 4000, (path, image.size)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, path  # dark ink on a light page


def test_fit_writes_test_confusion_that_agrees_with_test_metrics(digits_run: Path) -> None:
    confusion = json.loads((digits_run / "test_confusion.json").read_text())
    metrics = json.loads((digits_run / "test_metrics.json").read_text())
    matrix = np.array(confusion["matrix"])
    assert confusion["class_names"] == [str(d) for d in range(10)]
    assert matrix.shape == (10, 10)
    assert matrix.sum() == _test_set_size() == 360
    assert np.trace(matrix) == round(metrics["test/acc"] * matrix.sum())
    # Rows are the true classes: the split is stratified, so each digit has 35-37 test images.
    assert set(matrix.sum(axis=1)) <= {35, 36, 37}
    for name in PNGS:  # drawn by the callback, without `zoo report`
        _assert_picture(digits_run / name)


def test_report_writes_every_picture_of_the_run(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report([str(digits_run), "--output", str(tmp_path / "report")])
    out = capsys.readouterr().out
    printed = out.split()
    for name in PNGS:
        path = tmp_path / "report" / name
        assert str(path) in printed
        _assert_picture(path)
    assert "testing" not in out  # the samples come from the run's samples.npz, the matrix from its json
    assert "skipped" not in out  # every picture, the layer heat maps from the layer_stats.csv every fit records


def _test_losses(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every test image's loss, true and predicted class under the run's best checkpoint, computed here."""
    import torch
    import torch.nn.functional as F

    from zoo.checkpoints import load_datamodule, load_task, read_checkpoint

    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    ckpt = read_checkpoint(str(best))
    task, data = load_task(str(best), ckpt), load_datamodule(ckpt, str(best), "")
    data.setup("test")
    outputs, labels = [], []
    with torch.no_grad():
        for x, y in data.test_dataloader():
            outputs.append(task(x))
            labels.append(y)
    logits, y = torch.cat(outputs), torch.cat(labels)
    return F.cross_entropy(logits, y, reduction="none").numpy(), y.numpy(), logits.argmax(-1).numpy()


def test_top_losses_are_the_test_images_of_highest_loss(digits_run: Path) -> None:
    from zoo.plots_samples import read_samples

    losses, truth, predicted = _test_losses(digits_run)
    assert len(losses) == 360
    sets = read_samples(digits_run / "samples.npz")
    shown, source = sets["top_losses"]
    assert source.startswith("test, best-epoch=")
    top = np.argsort(-losses, kind="stable")[: len(shown)]
    assert len(shown) == 16
    assert [s.loss for s in shown] == pytest.approx(losses[top].tolist(), rel=1e-4)
    assert [(s.true, s.predicted) for s in shown] == [(str(t), str(p)) for t, p in zip(truth[top], predicted[top])]
    assert all(s.kind == "image" and s.data.shape == (8, 8) for s in shown)
    predictions, _ = sets["predictions"]
    assert [s.true for s in predictions] == [str(t) for t in truth[:16]]  # the split's first images
    assert [s.wrong for s in predictions] == [bool(t != p) for t, p in zip(truth[:16], predicted[:16])]
    batch, source = sets["train_batch"]
    assert source == "the first training batch" and len(batch) == 16
    assert {s.true for s in batch} <= {str(d) for d in range(10)}


def test_report_tests_the_checkpoint_for_samples_a_run_did_not_keep(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from zoo.plots_samples import read_samples

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "samples.npz").unlink()
    (run / "test_confusion.json").unlink()
    report([str(run), "--plots", "confusion_matrix", "top_losses"])
    out = capsys.readouterr().out
    assert out.count("testing ") == 1  # one test pass for the matrix and the samples
    assert re.search(r"samples\.npz written \(no samples\.npz in the run: tested .*best-epoch", out)
    again = read_samples(run / "samples.npz")["top_losses"][0]
    kept = read_samples(digits_run / "samples.npz")["top_losses"][0]
    assert [s.loss for s in again] == pytest.approx([s.loss for s in kept], rel=1e-5)
    _assert_picture(run / "top_losses.png")
    with pytest.raises(ZooError, match="no samples.npz with a training batch"):
        report([str(run), "--plots", "train_batch"])  # a batch is kept while training only


def test_report_tests_the_best_checkpoint_when_the_run_has_no_confusion_file(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "test_confusion.json").unlink()
    curves = (run / "learning_curves.png").stat().st_mtime_ns
    report([str(run), "--plots", "confusion_matrix"])
    out = capsys.readouterr().out
    assert re.search(r"tested .*best-epoch=\d+-step=\d+\.ckpt", out)
    # The same best checkpoint on the same test split: the very counts the callback saved at test time.
    assert json.loads((run / "test_confusion.json").read_text()) == json.loads(
        (digits_run / "test_confusion.json").read_text()
    )
    _assert_picture(run / "confusion_matrix.png")
    assert (run / "learning_curves.png").stat().st_mtime_ns == curves  # --plots draws only what it names


def test_learning_rate_plot_has_one_line_per_layer_group(digits_run: Path) -> None:
    from zoo.commands.report import optimizer_group_names

    history = read_metrics_csv(digits_run / "metrics.csv")
    fig = plot_learning_rates(history, group_order=optimizer_group_names(digits_run))
    lines = fig.axes[0].get_lines()
    # Each group's .no_decay twin has the same LR here, so it shares its group's line; stem to top.
    assert [line.get_label() for line in lines] == DIGITS_GROUPS
    for line in lines:
        assert list(line.get_xdata()) == [0.0, 1.0, 2.0]  # the monitor's step-only rows placed on epochs
        assert list(line.get_ydata()) == pytest.approx([0.003] * 3)  # digits_cnn.yaml's lr
    assert fig.axes[0].get_yscale() == "log"


def test_a_no_decay_group_with_its_own_lr_gets_a_dashed_line() -> None:
    history = {
        "val/loss": {0.0: 1.0, 1.0: 0.5},
        "lr-SGD/head": {0.0: 0.1, 1.0: 0.05},
        "lr-SGD/head.no_decay": {0.0: 0.2, 1.0: 0.1},
        "finetune/trainable_groups": {0.0: 0.0, 1.0: 1.0},
    }
    fig = plot_learning_rates(history)
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles == {"head": "-", "head.no_decay": "--"}
    assert len(fig.axes) >= 2 and "trainable" in fig.axes[1].get_ylabel()  # the fine-tuning schedule below
    assert plot_learning_rates({"val/loss": {0.0: 1.0}}) is None  # no LR logged: no picture


def test_learning_curves_mark_the_best_checkpoint_epoch(digits_run: Path) -> None:
    from zoo.plots import best_epoch

    names = [p.name for p in (digits_run / "checkpoints").iterdir()]
    best = int(re.search(r"best-epoch=(\d+)", " ".join(names)).group(1))
    history = read_metrics_csv(digits_run / "metrics.csv")
    assert best_epoch(history, names) == best
    fig = plot_learning_curves(history, best=best)
    loss_ax, score_ax = fig.axes[:2]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels[:3] == ["train", "val", f"best epoch ({best})"]
    assert sorted(line.get_label() for line in score_ax.get_lines() if not line.get_label().startswith("_")) == [
        "train/acc",
        "train/f1",
        "val/acc",
        "val/f1",
    ]
    assert "test: acc" in fig.get_suptitle()


def test_testing_the_best_checkpoint_keeps_every_epoch_of_the_curves() -> None:
    from zoo.callbacks.pictures import RunPictures

    # After `zoo fit`, testing the best checkpoint restores its callback state (history up to that epoch).
    callback = RunPictures()
    callback.history["val/loss"].update({0.0: 1.0, 1.0: 0.5, 2.0: 0.7})
    saved_at_best = {"history": {"val/loss": {0.0: 1.0, 1.0: 0.5}}}
    callback.load_state_dict(saved_at_best)
    assert callback.history["val/loss"] == {0.0: 1.0, 1.0: 0.5, 2.0: 0.7}
    resumed = RunPictures()  # a resumed fit in a new process: the checkpoint's history is all there is
    resumed.load_state_dict(saved_at_best)
    assert resumed.history["val/loss"] == {0.0: 1.0, 1.0: 0.5}


def _curves(fig) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """Every labelled line of a learning-curves figure: (panel title, label) -> (epochs, values)."""
    return {
        (ax.get_title(), line.get_label()): (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
        for ax in fig.axes
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def test_end_of_fit_curves_are_the_ones_report_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    import zoo.plots
    from zoo.callbacks.pictures import RunPictures
    from zoo.tasks import Classifier

    drawn = []  # the figures behind learning_curves.png: the callback's at the end of fit, then the report's

    def spy(*args, **kwargs):
        drawn.append(plot_learning_curves(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(zoo.plots, "plot_learning_curves", spy)
    torch.manual_seed(0)
    model = Classifier(backbone="mlp", backbone_kwargs={"hidden_sizes": [8]}, input_shape=(6,), num_classes=3)
    data = DataLoader(TensorDataset(torch.randn(48, 6), torch.randint(0, 3, (48,))), batch_size=8)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        callbacks=[RunPictures()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data, data)
    report([trainer.log_dir, "--output", str(tmp_path / "report"), "--plots", "learning_curves"])
    fitted, reported = (_curves(fig) for fig in drawn)
    # Training is logged after validation, at the epoch's very end: each epoch's values under their own epoch.
    for key in [("loss", "train"), ("scores (higher is better)", "train/acc"), ("loss", "val")]:
        assert fitted[key][0] == [0.0, 1.0], key
    assert fitted.keys() == reported.keys()
    for key, (epochs, values) in reported.items():
        assert fitted[key][0] == epochs, key
        assert fitted[key][1] == pytest.approx(values, rel=1e-6), key


def test_report_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ZooError, match="no such folder"):
        report([str(tmp_path / "nowhere")])
    (tmp_path / "runs" / "x" / "version_0").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "version_0" / "metrics.csv").write_text("")
    with pytest.raises(ZooError, match=r"has no metrics\.csv.*config\.yaml.*did you mean .*version_0"):
        report([str(tmp_path / "runs" / "x")])
    with pytest.raises(ZooError, match="is empty"):
        report([str(tmp_path / "runs" / "x" / "version_0")])
    (tmp_path / "runs" / "x" / "version_0" / "metrics.csv").write_text("epoch,step,val/loss\n")
    with pytest.raises(ZooError, match="no logged values"):
        report([str(tmp_path / "runs" / "x" / "version_0")])
    # Through the command line: one line, exit code 2.
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["report", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and "no such folder" in err


@pytest.mark.slow  # end to end (a whole run and its processes): the second tier
def test_regression_run_has_curves_but_no_confusion_matrix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cwd = _workspace(tmp_path / "work")
    result = run_zoo(
        "fit", "--config", "configs/experiments/diabetes_mlp.yaml", *TINY, "--trainer.max_epochs=2", *PICTURES, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = cwd / "runs" / "diabetes_mlp" / "version_0"
    assert not (run / "test_confusion.json").exists() and not (run / "confusion_matrix.png").exists()
    report([str(run), "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "confusion_matrix.png skipped" in out and "Regressor" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["learning_curves.png", "learning_rate.png", *SAMPLE_PNGS, "layer_stats.png"]
    )
    from zoo.plots_samples import read_samples

    for sample in read_samples(run / "samples.npz")["top_losses"][0]:  # values in the data's units, no classes
        assert sample.kind == "table" and sample.probability is None and sample.wrong is None
        assert float(sample.predicted) > 0 and float(sample.true) > 0
    with pytest.raises(SystemExit):
        zoo_main(["report", str(run), "--plots", "confusion_matrix"])
    assert re.search(r"zoo: error: .*Regressor run: a confusion matrix needs a classifier", capsys.readouterr().err)


@pytest.mark.slow  # end to end (a whole run and its processes): the second tier
def test_wandb_run_logs_the_pictures_as_images(tmp_path: Path) -> None:
    cwd = _workspace(tmp_path / "work")
    env = {"HOME": str(cwd), "WANDB_API_KEY": "", "WANDB_MODE": ""}  # not logged in: an offline run
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        "--trainer.logger",
        "configs/logger/wandb.yaml",
        *TINY,
        *PICTURES,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (offline,) = (cwd / "runs" / "wandb").glob("offline-run-*")
    media = offline / "files" / "media" / "images" / "pictures"
    logged = {re.sub(r"_\d+_[0-9a-f]+\.png$", "", p.name) for p in media.glob("*.png")}
    assert logged == {
        "learning_curves",
        "learning_rate",
        "test_confusion_matrix",
        "val_confusion_matrix",
        "val_samples",
        "predictions",
        "top_losses",
        "train_batch",
        "layer_stats",
    }
    for path in media.glob("*.png"):
        with Image.open(path) as image:
            assert image.size[0] >= 300
    record = next(offline.glob("*.wandb")).read_bytes()
    assert b"pictures/test_confusion_matrix" in record and b"images/separated" in record  # history rows
    # The run folder beside the checkpoints (where test_metrics.json goes) has the PNG files too.
    (run,) = (cwd / "runs" / "zoo").iterdir()
    assert {p.name for p in run.glob("*.png")} == set(PNGS)


@pytest.mark.slow
def test_two_real_runs_compared_differ_in_their_model_settings_only(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cwd = digits_run.parents[2]  # the fixture's workspace: the second run lands beside the first
    result = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_mlp.yaml",
        *TINY,
        "--trainer.max_epochs=3",
        "--trainer.limit_test_batches=1.0",
        *PICTURES,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlp = cwd / "runs" / "digits_mlp" / "version_0"
    report([str(digits_run), str(mlp), "--output", str(tmp_path / "compare")])
    printed = capsys.readouterr().out
    with open(tmp_path / "compare" / "compare.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][2:] == ["digits_cnn", "digits_mlp"]
    settings = {row[0]: row[2:] for row in rows if row[1] == "setting"}
    assert settings["model.init_args.backbone"] == ["cnn", "mlp"]
    assert settings["trainer.logger.init_args.name"] == ["digits_cnn", "digits_mlp"]
    # Same data, trainer and callbacks: what differs is the model (and the run's name), nothing else.
    assert {k for k in settings if not k.startswith("model.")} == {"trainer.logger.init_args.name"}
    metrics = {row[0]: row[2:] for row in rows if row[1] == "metric"}
    tests = [json.loads((r / "test_metrics.json").read_text())["test/acc"] for r in (digits_run, mlp)]
    assert metrics["test/acc"] == [f"{t:.4g}" for t in tests]
    assert metrics["epochs"] == ["3", "3"]
    _assert_picture(tmp_path / "compare" / "learning_curves.png")
    assert "settings that differ:" in printed
