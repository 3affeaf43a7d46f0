"""TabularCSV and the tabular_mlp backbone: one's own CSV of numeric, missing and categorical columns, trained
through `zoo fit`, predicted on new rows from the checkpoint alone, and every bad CSV named by file, line, column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import TabularCSV
from datamodules.csv_table import read_table
from tests.conftest import TINY, run_zoo
from zoo.backbones.tabular import embedding_size
from zoo.errors import ConfigError, DataError
from zoo.registry import create_backbone
from zoo.tasks import Classifier

FEATURES = ["x", "colour", "count"]


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _mixed(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A numeric column with missing values, a categorical one (some missing), an integer one; a class label that
    depends on both the number and the category, and a numeric value."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = float(rng.normal())
        colour = str(rng.choice(["red", "green", "blue"]))
        label = "pos" if (colour == "red") != (x > 0) else "neg"
        value = 2 * x + 3 * (colour == "red") + 0.1 * float(rng.normal())
        rows.append(
            [
                "" if rng.random() < 0.1 else f"{x:.4f}",
                "" if rng.random() < 0.05 else colour,
                int(rng.integers(0, 6)),
                label,
                f"{value:.4f}",
            ]
        )
    return _write(path, ["x", "colour", "count", "label", "value"], rows)


def _data(path: Path, target: str = "label", **kwargs) -> TabularCSV:
    kwargs.setdefault("feature_columns", FEATURES)
    return TabularCSV(str(path), target, **kwargs)


# --- reading and encoding ----------------------------------------------------------------------------
def test_columns_are_standardised_filled_flagged_and_coded_with_training_statistics(tmp_path: Path) -> None:
    data = _data(_mixed(tmp_path / "t.csv"), val_split=0.2, test_split=0.2)
    data.setup("fit")
    state = data.table_state
    assert state["numeric"] == ["x", "count"] and state["categorical"] == ["colour"]  # integers stay numeric
    assert state["indicators"] == ["x"] and state["vocab"] == {"colour": ["blue", "green", "red"]}
    assert data.input_shape == (4,) and data.categories == [4]  # x, count, x missing, colour code; 3 + code 0
    assert data.task == "classification" and data.class_names == ["neg", "pos"] and data.num_classes == 2

    x = data.train_set.tensors[0]
    assert x[:, :2].mean(0).abs().max() < 1e-5  # standardised on the training split, missing filled first
    train_rows = data._splits[0]
    raw_x = np.array([float(v) if v else np.nan for v in data._train_table.column("x")])[train_rows]
    missing = np.isnan(raw_x)
    assert torch.equal(x[:, 2], torch.tensor(missing, dtype=torch.float32))  # the 0/1 indicator
    filled = (np.nanmedian(raw_x) - state["mean"]["x"]) / state["std"]["x"]
    assert torch.allclose(x[torch.from_numpy(missing), 0], torch.tensor(filled, dtype=torch.float32))
    colours = np.array(data._train_table.column("colour"))[train_rows]
    assert torch.equal(x[:, 3], torch.tensor([{"": 0, "blue": 1, "green": 2, "red": 3}[c] for c in colours]).float())


def test_unseen_and_missing_categories_are_code_zero(tmp_path: Path) -> None:
    data = _data(_mixed(tmp_path / "t.csv"))
    new = _write(tmp_path / "new.csv", FEATURES, [[0.5, "purple", 1], [0.5, "NA", 1], [0.5, "red", 1]])
    dataset, names = data.predict_inputs(str(new))
    assert dataset.tensors[0][:, -1].tolist() == [0.0, 0.0, 3.0] and names == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b"] * 10, "classification"),
        ([1, 2, 3] * 7, "classification"),
        ([0.5, 1.5] * 10, "regression"),
        (list(range(30)), "regression"),
    ],
)
def test_task_auto_reads_words_and_few_integers_as_classes(tmp_path: Path, values: list, task: str) -> None:
    path = _write(tmp_path / "t.csv", ["f", "y"], [[i, v] for i, v in enumerate(values)])
    assert TabularCSV(str(path), "y").task == task


def test_numeric_class_labels_are_one_class_however_written(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", ["f", "y"], [[i, v] for i, v in enumerate(["1", "1.0", "2", "10"] * 5)])
    data = TabularCSV(str(path), "y", task="classification")
    assert data.class_names == ["1", "2", "10"]  # by value, not as text


def test_baseline_data_is_train_and_val_in_own_units_with_nan_and_codes(tmp_path: Path) -> None:
    for target in ("label", "value"):
        data = _data(_mixed(tmp_path / "t.csv"), target, val_split=0.2, test_split=0.25)
        base = data.baseline_data()
        train, val, test = data._splits
        assert base.kind == "table" and base.categorical == [2]  # x, count, then the colour codes
        assert base.x_train.shape == (len(train) + len(val), 3) and base.x_test.shape == (len(test), 3)
        assert np.isnan(base.x_train[:, 0]).any() and not np.isnan(base.x_train[:, 1]).any()
        raw = np.array([float(v) if v else np.nan for v in data._train_table.column("x")])
        np.testing.assert_array_equal(base.x_test[:, 0], raw[test])  # not standardised
        if target == "value":
            assert base.y_train.shape == (len(train) + len(val), 1) and base.y_train.dtype == np.float64
        else:
            assert set(base.y_test.tolist()) <= {0, 1} and base.y_test.dtype == np.int64


def test_state_round_trip_reads_new_rows_without_the_training_file(tmp_path: Path) -> None:
    fitted = _data(_mixed(tmp_path / "t.csv"), "value", task="regression")
    fitted.setup("fit")
    path = tmp_path / "state.pt"
    torch.save(fitted.state_dict(), path)
    restored = _data(tmp_path / "moved_away.csv", "value", task="regression")
    restored.load_state_dict(torch.load(path, weights_only=True))  # plain data: what a checkpoint may hold
    for fact in ("input_shape", "categories", "task", "class_names", "num_targets", "target_mean", "target_std"):
        assert getattr(restored, fact) == getattr(fitted, fact), fact
    new = _write(tmp_path / "new.csv", ["count", "colour", "x"], [[2, "red", ""], [5, "teal", 1.25]])  # no target
    dataset, _ = restored.predict_inputs(str(new))
    assert torch.equal(dataset.tensors[0], fitted.encode(read_table(str(new))))
    assert dataset.tensors[0][:, -1].tolist() == [3.0, 0.0]  # red; teal is unseen


# --- errors a user sees ------------------------------------------------------------------------------
def _bad(tmp_path: Path, case: str) -> tuple[TabularCSV, str]:
    """A datamodule over a broken CSV, and what the run does that trips over it."""
    train = _mixed(tmp_path / "train.csv")
    if case == "missing target":
        return _data(train, "lable"), "setup"
    if case == "empty file":
        (tmp_path / "empty.csv").write_text("")
        return _data(tmp_path / "empty.csv"), "setup"
    if case == "one class":
        return TabularCSV(str(_write(tmp_path / "one.csv", ["f", "y"], [[i, "a"] for i in range(10)])), "y"), "setup"
    if case == "typo in a numeric column":
        rows = [[i, "a" if i % 2 else "b"] for i in range(20)]
        rows[6][0] = "12..5"
        return TabularCSV(str(_write(tmp_path / "typo.csv", ["f", "y"], rows)), "y"), "setup"
    if case == "word in a numeric test column":
        rows = [[0.1, "red", 1, "pos"], ["high", "red", 1, "neg"]]
        test = _write(tmp_path / "test.csv", ["x", "colour", "count", "label"], rows)
        return _data(train, test_file=str(test)), "setup"
    if case == "unknown test class":
        rows = [[0.1, "red", 1, "pos"], [0.2, "red", 1, "maybe"]]
        test = _write(tmp_path / "test.csv", ["x", "colour", "count", "label"], rows)
        return _data(train, test_file=str(test)), "setup"
    if case == "feature absent from predict file":
        _write(tmp_path / "new.csv", ["x", "color", "count"], [[0.1, "red", 1]])
        return _data(train), "predict"
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        (
            "missing target",
            r"train\.csv has no target column 'lable' \(did you mean 'label'\?\); its columns are: "
            r"x, colour, count, label, value",
        ),
        ("empty file", r"empty\.csv is empty: a table needs a header row"),
        ("one class", r"one\.csv, column 'y': every row has the class 'a'; a classifier needs at least two classes"),
        (
            "typo in a numeric column",
            r"typo\.csv, line 8, column 'f': '12\.\.5' is not a number, but 19 of the "
            r"column's 20 values are",
        ),
        (
            "word in a numeric test column",
            r"test\.csv, line 3, column 'x': 'high' is not a number, and this column "
            r"is numeric in .*train\.csv",
        ),
        (
            "unknown test class",
            r"test\.csv, line 3, column 'label': the class 'maybe' is not among the training "
            r"file's classes \['neg', 'pos'\]",
        ),
        (
            "feature absent from predict file",
            r"new\.csv has no feature column\(s\) \(the model reads them; trained "
            r"on .*train\.csv\) 'colour' \(did you mean 'color'\?\); its columns "
            r"are: x, color, count",
        ),
    ],
)
def test_bad_csv_names_file_line_and_column(tmp_path: Path, case: str, said: str) -> None:
    data, stage = _bad(tmp_path, case)
    with pytest.raises(DataError, match=said):
        data.setup("fit") if stage == "setup" else data.predict_inputs(str(tmp_path / "new.csv"))


def test_bad_csv_exits_2_without_traceback(workdir: Path) -> None:
    _mixed(workdir / "train.csv")
    _write(workdir / "test.csv", ["x", "colour", "count", "label"], [[0.1, "red", 1, "maybe"]])
    done = run_zoo(
        "fit",
        "--config",
        "configs/recipes/tabular_classification.yaml",
        "--data.train_file=train.csv",
        "--data.target_column=label",
        "--data.test_file=test.csv",
        f"--data.feature_columns=[{','.join(FEATURES)}]",
        *TINY,
        cwd=workdir,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "test.csv, line 2, column 'label': the class 'maybe' is not among" in done.stderr


# --- the backbone --------------------------------------------------------------------------------------
def test_tabular_mlp_embeds_each_categorical_column_by_the_fastai_rule() -> None:
    torch.manual_seed(0)
    model = create_backbone("tabular_mlp", input_shape=(4,), categories=[4, 30], hidden_sizes=(8,)).eval()
    assert [e.embedding_dim for e in model.embed.embeds] == [embedding_size(4), embedding_size(30)] == [3, 11]
    assert embedding_size(10**6) == 600 and list(model.layer_groups()) == ["embed", "block0"]
    x = torch.tensor([[0.5, -1.0, 1.0, 7.0], [0.5, -1.0, 2.0, 7.0]])
    features = model.forward_features(x)
    assert not torch.allclose(features[0], features[1])  # the code, not its size as a number, is what changed
    features.sum().backward()
    grads = model.embed.embeds[0].weight.grad
    assert grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0 and grads[0].abs().sum() == 0
    outside = model.forward_features(torch.tensor([[0.5, -1.0, -3.0, 30.0], [0.5, -1.0, 0.0, 0.0]]))
    assert torch.allclose(outside[0], outside[1])  # codes outside a column's range read as 0, unknown


def test_categorical_data_with_a_backbone_that_cannot_embed_is_named() -> None:
    with pytest.raises(
        ConfigError, match="1 categorical column.*which backbone 'mlp' cannot embed; use model.backbone: tabular_mlp"
    ):
        Classifier(backbone="mlp", input_shape=(3,), num_classes=2, categories=[4])


# --- end to end through `zoo fit` and `zoo predict` -----------------------------------------------------
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_then_predict_a_new_csv_without_the_target(workdir: Path, task: str) -> None:
    _mixed(workdir / "train.csv")
    target = "label" if task == "classification" else "value"
    done = run_zoo(
        "fit",
        "--config",
        f"configs/recipes/tabular_{task}.yaml",
        "--data.train_file=train.csv",
        f"--data.target_column={target}",
        f"--data.feature_columns=[{','.join(FEATURES)}]",
        *TINY,
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = workdir / "runs" / f"tabular_{task}" / "version_0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert ("test/acc" if task == "classification" else "test/r2") in metrics
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["categories"] == [4]

    _write(workdir / "new.csv", ["colour", "x", "count"], [["red", 0.3, 2], ["", "", 1], ["mauve", -1, 4]])
    done = run_zoo("predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "new.csv", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((workdir / "predictions.csv").open()))
    assert [r["input"] for r in rows] == ["1", "2", "3"]
    if task == "classification":
        assert list(rows[0]) == ["input", "predicted", "probability", "p_neg", "p_pos"]
        assert all(r["predicted"] in ("neg", "pos") for r in rows)
    else:
        assert list(rows[0]) == ["input", "value_0"] and all(np.isfinite(float(r["value_0"])) for r in rows)


@pytest.mark.slow
def test_recipe_learns_a_class_that_needs_the_category(workdir: Path) -> None:
    _mixed(workdir / "train.csv", n=600)
    _mixed(workdir / "test.csv", n=300, seed=1)
    done = run_zoo(
        "fit",
        "--config",
        "configs/recipes/tabular_classification.yaml",
        "--data.train_file=train.csv",
        "--data.target_column=label",
        "--data.test_file=test.csv",
        f"--data.feature_columns=[{','.join(FEATURES)}]",
        "--trainer.enable_progress_bar=false",
        "--pictures=false",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((workdir / "runs/tabular_classification/version_0/test_metrics.json").read_text())
    assert metrics["test/acc"] >= 0.85, metrics  # x > 0 xor red: neither column alone does better than ~0.67
