"""Cheap baselines beside every test (zoo.baselines): each kind of data on small real sets, unequal series, the keys
written, the sentence a user reads, and failures that must not lose the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import main
from datamodules import MNIST, Digits, ImageFolder, SklearnTabular, TextClassification, TimeSeries
from datamodules.base import BaselineData
from tests.conftest import TINY
from zoo.baselines import baselines_of_run, comparison, linear_probe, padded_series, run_baselines

CLASSIFICATION_KEYS = {"acc", "f1", "seconds"}


def keys_of(results: dict[str, float], name: str) -> set[str]:
    return {k.split("/")[2] for k in results if k.startswith(f"baseline/{name}/")}


def prepared(datamodule):
    datamodule.setup("test")
    return datamodule.baseline_data()


# --- each kind of data ------------------------------------------------------------------------------
def test_table_baselines_on_breast_cancer_are_binary_metrics_on_the_models_test_split():
    datamodule = SklearnTabular("breast_cancer")
    data = prepared(datamodule)
    # train + validation learn, the model's test split scores: the same samples, in the test loader's order
    assert len(data.y_train) == len(datamodule.train_set) + len(datamodule.val_set)
    assert np.array_equal(data.y_test, datamodule.test_set.tensors[1].numpy())
    results = run_baselines(data, "classification")
    assert keys_of(results, "majority") == keys_of(results, "hist_gradient_boosting") == {*CLASSIFICATION_KEYS, "auroc"}
    majority = np.bincount(data.y_train).argmax()
    assert results["baseline/majority/acc"] == pytest.approx(np.mean(data.y_test == majority))
    assert results["baseline/majority/auroc"] == 0.5  # a constant score ranks nothing
    assert results["baseline/hist_gradient_boosting/acc"] > 0.9
    assert results["baseline/hist_gradient_boosting/auroc"] > 0.95


def test_table_regression_reports_the_regressors_metrics_in_the_targets_units():
    data = prepared(SklearnTabular("diabetes"))
    assert data.y_train.shape[1] == 1 and data.y_train.dtype == np.float64
    results = run_baselines(data, "regression")
    assert keys_of(results, "mean") == keys_of(results, "hist_gradient_boosting") == {"mae", "rmse", "r2", "seconds"}
    mean = data.y_train.mean()
    assert results["baseline/mean/mae"] == pytest.approx(np.abs(data.y_test - mean).mean())
    assert results["baseline/mean/r2"] <= 0.0  # the training mean explains nothing of the test targets
    assert results["baseline/hist_gradient_boosting/rmse"] < results["baseline/mean/rmse"]


def test_categorical_columns_and_missing_values_reach_the_trees():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=400).astype(float)  # a category whose classes are not an order: {1, 4} vs the rest
    noise = rng.normal(size=400)
    noise[::7] = np.nan
    x, y = np.stack([noise, codes], axis=1), np.isin(codes, [1, 4]).astype(int)
    data = BaselineData("table", x[:300], y[:300], x[300:], y[300:], categorical=[1])
    assert run_baselines(data, "classification")["baseline/hist_gradient_boosting/acc"] == 1.0


def test_minirocket_on_italy_power_demand():
    data = prepared(TimeSeries(name="ItalyPowerDemand"))
    assert data.kind == "series" and data.x_train[0].shape == (24, 1)
    results = run_baselines(data, "classification")
    assert results["baseline/minirocket/acc"] > 0.9
    assert results["baseline/minirocket/seconds"] > 0


def test_minirocket_takes_series_of_unequal_lengths_and_shorter_than_its_kernels():
    data = prepared(TimeSeries(name="JapaneseVowels"))  # 7 to 29 steps, 12 channels
    lengths = {len(s) for s in data.x_train + data.x_test}
    assert len(lengths) > 1 and min(lengths) < 9
    assert run_baselines(data, "classification")["baseline/minirocket/acc"] > 0.9


def test_padded_series_repeat_each_series_last_step():
    padded = padded_series([np.array([[1.0], [2.0]]), np.array([[3.0], [np.nan], [5.0]])], length=9)
    assert padded.shape == (2, 1, 9)
    assert padded[0, 0].tolist() == [1.0] + [2.0] * 8
    assert padded[1, 0].tolist() == [3.0, 0.0] + [5.0] * 7


def test_minirocket_regression_on_series():
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(int(rng.integers(20, 40)), 1)) for _ in range(120)]
    y = np.array([[float(s.std())] for s in series])  # a property of the whole series, whatever its length
    data = BaselineData("series", series[:90], y[:90], series[90:], y[90:])
    results = run_baselines(data, "regression")
    assert results["baseline/minirocket/rmse"] < results["baseline/mean/rmse"]


def test_text_baseline_reads_the_raw_strings(workdir: Path):
    good, bad = ["good", "great", "lovely"], ["bad", "awful", "dull"]
    rows = [
        f"{('the film was ' + w)} {i},{label}"
        for i in range(40)
        for w, label in ((good[i % 3], "pos"), (bad[i % 3], "neg"))
    ]
    (workdir / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    data = prepared(TextClassification(train_file="reviews.csv"))
    assert data.kind == "text" and data.x_train[0].startswith("the film was")
    assert len(data.x_train) + len(data.x_test) == 80
    results = run_baselines(data, "classification")
    assert keys_of(results, "tfidf_logreg") == {*CLASSIFICATION_KEYS, "auroc"}
    assert results["baseline/tfidf_logreg/acc"] == 1.0
    assert results["baseline/majority/acc"] == 0.5


def test_pixels_baseline_on_digits():
    datamodule = Digits()
    data = prepared(datamodule)
    assert data.x_train.shape[1:] == (1, 8, 8) and len(data.x_test) == len(datamodule.test_set)
    assert np.allclose(data.x_test, datamodule.test_set.tensors[0].numpy())  # the prepared images the model sees
    results = run_baselines(data, "classification")
    assert results["baseline/pixels_logreg/acc"] > 0.9
    assert results["baseline/majority/acc"] < 0.2


def test_few_shot_digits_baseline_learns_from_the_few_labelled_images_only():
    data = prepared(Digits(classes=[5, 6, 7, 8, 9], samples_per_class=10))
    assert len(data.y_train) == 50 and sorted(np.bincount(data.y_train)) == [10] * 5  # not the validation split too


def test_image_folder_baseline_reads_every_split_at_most_32_pixels_a_side(tmp_path: Path):
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (40, 40), (80 * c,) * 3).save(tmp_path / name / f"{i}.png")
    datamodule = ImageFolder(data_dir=str(tmp_path), image_size=64, val_split=0.2, test_split=0.2)
    data = prepared(datamodule)
    assert data.x_train.shape == (24, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
    assert data.y_test.tolist() == [datamodule.test_set[i][1] for i in range(6)]  # the model's test split, in order
    model_view = datamodule.test_set[0][0]  # 64x64, normalised: a uniform image has the same values at 32x32
    assert np.allclose(data.x_test[0], model_view[:, :32, :32].numpy(), atol=1e-5)
    assert run_baselines(data, "classification")["baseline/pixels_logreg/acc"] == 1.0


def test_torchvision_sets_give_their_prepared_images(tmp_path: Path):
    from tests.test_datamodules_images import write_mnist

    write_mnist(tmp_path, "MNIST", n_train=30, n_test=10)
    datamodule = MNIST(data_dir=str(tmp_path), download=False, val_split=0.2)
    data = prepared(datamodule)
    assert data.x_train.shape == (30, 1, 28, 28) and sorted(data.y_train.tolist()) == sorted([0, 1, 2] * 10)
    expected = torch.stack([datamodule.test_set[i][0] for i in range(10)]).numpy()
    assert np.array_equal(data.x_test, expected) and data.y_test.tolist() == [i % 3 for i in range(10)]


def test_large_training_parts_are_a_seeded_subsample():
    from datamodules.base import capped

    assert capped(50, seed=1, cap=50).tolist() == list(range(50))
    picked = capped(50, seed=1, cap=10)
    assert len(set(picked.tolist())) == 10 and picked.tolist() == sorted(picked.tolist())
    assert picked.tolist() == capped(50, seed=1, cap=10).tolist() != capped(50, seed=2, cap=10).tolist()


def test_linear_probe_fits_the_pretrained_backbones_frozen_features(tmp_path: Path):
    timm = pytest.importorskip("timm")
    from zoo.tasks import Classifier

    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    datamodule = Digits(batch_size=256)
    datamodule.setup("test")
    model = Classifier("timm/test_resnet", pretrained=str(weights), input_shape=(1, 8, 8), num_classes=10)
    results = linear_probe(model, datamodule, "classification", test_samples=100, cap=300)
    assert keys_of(results, "linear_probe") == CLASSIFICATION_KEYS
    assert results["baseline/linear_probe/acc"] > 0.5  # pretrained features of digits, not chance (0.1)
    scratch = Classifier("cnn", input_shape=(1, 8, 8), num_classes=10)
    assert linear_probe(scratch, datamodule, "classification") == {}  # no pretrained backbone, no probe


# --- what a user reads --------------------------------------------------------------------------------
def test_the_sentence_says_when_the_model_does_not_beat_a_baseline():
    baselines = {"baseline/majority/acc": 0.6, "baseline/majority/seconds": 0.0}
    text = comparison({"test/acc": 0.55}, baselines, "classification")
    assert text.splitlines()[-1] == "the model (test/acc 0.5500) does not beat the baseline majority (0.6000)"
    baselines.update({"baseline/minirocket/acc": 0.8, "baseline/minirocket/seconds": 1.0})
    text = comparison({"test/acc": 0.85}, baselines, "classification")
    assert text.splitlines()[-1] == "the model (test/acc 0.8500) beats the best baseline minirocket (0.8000) by 0.0500"


def test_for_regression_the_sentence_compares_rmse_where_lower_is_better():
    baselines = {"baseline/mean/rmse": 70.0, "baseline/hist_gradient_boosting/rmse": 57.0}
    text = comparison({"test/rmse": 60.0}, baselines, "regression")
    assert "by rmse (lower is better)" in text
    assert text.splitlines()[-1].endswith("does not beat the baseline hist_gradient_boosting (57.0000)")


def test_a_failing_baseline_is_a_note_and_the_others_stay(capsys: pytest.CaptureFixture, monkeypatch):
    import zoo.baselines

    def broken(data, task):
        raise ValueError("the trees cannot read this table")

    monkeypatch.setattr(zoo.baselines, "_trees", broken)
    x = np.zeros((20, 3))
    data = BaselineData("table", x, np.arange(20) % 2, np.zeros((5, 3)), np.arange(5) % 2)
    results = run_baselines(data, "classification")
    assert keys_of(results, "majority") and results["baseline/hist_gradient_boosting/failed"] == 1.0
    assert "baseline/hist_gradient_boosting/acc" not in results
    said = capsys.readouterr().err
    assert "baseline hist_gradient_boosting failed and is skipped: ValueError: the trees cannot read this table" in said


def test_without_aeon_minirocket_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, capsys):
    for module in ("aeon", "aeon.transformations.collection.convolution_based"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    series = [np.ones((12, 1))] * 4
    results = run_baselines(
        BaselineData("series", series, np.array([0, 1, 0, 1]), series, np.array([0, 1, 0, 1])), "classification"
    )
    assert set(results) == {f"baseline/majority/{k}" for k in ("acc", "f1", "auroc", "seconds")}
    assert "baseline minirocket skipped: aeon is not installed" in capsys.readouterr().err


def test_other_tasks_get_no_baseline():
    assert baselines_of_run(None, object(), Digits(), {"test/loss": 1.0}) == ({}, "")


# --- through the CLI ----------------------------------------------------------------------------------
DIGITS_CNN = ["--config", "configs/experiments/digits_cnn.yaml", *TINY]


def test_fit_writes_the_baselines_into_test_metrics_and_says_the_model_does_not_beat_them(workdir: Path, capsys):
    main(["fit", *DIGITS_CNN, "--baseline=true"])  # after it: one epoch of 3 batches, far from a logistic regression
    metrics = json.loads((workdir / "runs/digits_cnn/version_0/test_metrics.json").read_text())
    assert {
        "test/acc",
        "baseline/majority/acc",
        "baseline/pixels_logreg/acc",
        "baseline/pixels_logreg/f1",
        "baseline/pixels_logreg/seconds",
    } <= set(metrics)
    assert metrics["baseline/pixels_logreg/acc"] > 0.9
    out = capsys.readouterr()
    assert f"the model (test/acc {metrics['test/acc']:.4f}) does not beat the baseline pixels_logreg" in out.out
    # with limit_test_batches=2 the model saw 2 batches of the test split: the baselines are scored on those
    assert "scored on the first 128 test samples" in out.err


def test_a_failing_baseline_does_not_lose_the_run(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Digits, "baseline_data", broken)
    main(["fit", *DIGITS_CNN, "--baseline=true"])
    metrics = json.loads((workdir / "runs/digits_cnn/version_0/test_metrics.json").read_text())
    assert "test/acc" in metrics and not any(k.startswith("baseline/") for k in metrics)
    assert "baselines skipped: RuntimeError: disk on fire" in capsys.readouterr().err
