"""The scikit-learn datamodules (Digits, SklearnTabular) and the shared split and loader logic.

They read data that ships with scikit-learn, so these run offline; torchvision formats are covered in
test_datamodules_images.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from datamodules import Digits, SklearnTabular
from datamodules.base import split_indices
from tests.conftest import ROOT
from zoo.errors import ConfigError, DataError


def _targets(dataset) -> torch.Tensor:
    return dataset.tensors[1]


def _inputs(dataset) -> torch.Tensor:
    return dataset.tensors[0]


@pytest.fixture(scope="module")
def digits() -> Digits:
    dm = Digits(batch_size=16)
    dm.setup()
    return dm


# --- Digits ------------------------------------------------------------------------------------------
def test_digits_metadata(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert _inputs(digits.train_set).shape[1:] == (1, 8, 8)


def test_digits_splits_cover_all_samples_in_requested_sizes(digits):
    sizes = [len(s) for s in (digits.train_set, digits.val_set, digits.test_set)]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(0.1 * 1797, abs=1)


def test_digits_splits_are_disjoint_index_sets_of_the_raw_data(digits):
    raw = load_digits()
    train, val, test = split_indices(1797, 0.1, 0.2, seed=42, stratify=raw.target)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert len(set(train) | set(val) | set(test)) == 1797
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1)
    mean, std = images[train].mean(), images[train].std()  # the training pixels' statistics only
    for split, idx in ((digits.train_set, train), (digits.val_set, val), (digits.test_set, test)):
        torch.testing.assert_close(_inputs(split), (images[idx] - mean) / std, atol=1e-4, rtol=0)
        assert torch.equal(_targets(split), torch.tensor(raw.target[idx]))


def test_digits_splits_are_stratified(digits):
    for split in (digits.train_set, digits.val_set, digits.test_set):
        counts = torch.bincount(_targets(split), minlength=10)
        assert (counts > 0).all()
        shares = counts / counts.sum()
        assert (shares - 0.1).abs().max() < 0.02  # the digits are ~10% each; stratification keeps that


def test_digits_same_seed_same_split_other_seed_differs():
    a, b, c = Digits(seed=7), Digits(seed=7), Digits(seed=8)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(_inputs(a.test_set), _inputs(b.test_set))
    assert torch.equal(_targets(a.val_set), _targets(b.val_set))
    assert not torch.equal(_targets(a.test_set), _targets(c.test_set))


def test_digits_normalisation_fitted_on_train_only(digits):
    train = _inputs(digits.train_set)
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    test = _inputs(digits.test_set)
    assert test.mean().item() != pytest.approx(0.0, abs=1e-4)  # fitted on train, so test is only close
    assert abs(test.mean().item()) < 0.1


def test_digits_accepts_matching_num_classes():
    dm = Digits(num_classes=10)
    dm.setup()
    assert dm.num_classes == 10


def test_digits_wrong_num_classes_names_both_numbers():
    dm = Digits(num_classes=5)
    with pytest.raises(DataError, match=r"data.num_classes=5 but Digits has 10 classes"):
        dm.setup()
    assert dm.train_set is None


def test_digits_class_subset_is_relabelled_in_the_given_order():
    raw = load_digits()
    dm = Digits(classes=[7, 5, 9])
    dm.setup()
    assert dm.num_classes == 3 and dm.class_names == ["7", "5", "9"]
    total = sum(len(s) for s in (dm.train_set, dm.val_set, dm.test_set))
    assert total == sum((raw.target == d).sum() for d in (7, 5, 9))
    # 7, 5 and 9 have 179, 182 and 180 images: the per-label counts prove the relabelling
    labels = torch.cat([_targets(s) for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert torch.bincount(labels).tolist() == [(raw.target == d).sum() for d in (7, 5, 9)] == [179, 182, 180]


def test_digits_few_shot_keeps_n_per_class_and_the_same_test_set():
    full, few = Digits(classes=[5, 6, 7, 8, 9]), Digits(classes=[5, 6, 7, 8, 9], samples_per_class=10)
    full.setup()
    few.setup()
    assert torch.bincount(_targets(few.train_set)).tolist() == [10] * 5
    assert torch.equal(_targets(few.test_set), _targets(full.test_set))
    other = Digits(classes=[5, 6, 7, 8, 9], samples_per_class=10, seed=1)
    other.setup()
    assert not torch.equal(_inputs(other.train_set), _inputs(few.train_set))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"classes": [3, 11]}, ConfigError, r"data.classes=\[3, 11\] must be at least 2 distinct digits"),
        ({"classes": [4, 4]}, ConfigError, "distinct"),
        ({"samples_per_class": 0}, ConfigError, "samples_per_class=0 must be at least 1"),
        ({"samples_per_class": 500}, DataError, "samples_per_class=500 but digit 0 has only"),
    ],
)
def test_digits_bad_subset_settings_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        Digits(**kwargs).setup()


# --- SklearnTabular ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, num_classes, features", [("breast_cancer", 2, 30), ("wine", 3, 13), ("iris", 3, 4)])
def test_tabular_classification_metadata(name, num_classes, features):
    dm = SklearnTabular(name=name)
    dm.setup()
    assert dm.num_classes == num_classes and dm.input_shape == (features,)
    assert dm.num_targets is None and dm.target_mean is None and dm.target_std is None
    assert len(dm.class_names) == num_classes
    assert _targets(dm.train_set).dtype == torch.long
    assert set(_targets(dm.val_set).tolist()) == set(range(num_classes))  # stratified


def test_tabular_features_standardised_on_train():
    dm = SklearnTabular(name="wine")
    dm.setup()
    train = _inputs(dm.train_set)
    torch.testing.assert_close(train.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0), torch.ones(13), atol=1e-4, rtol=0)


def test_diabetes_is_regression_with_train_target_stats():
    dm = SklearnTabular(name="diabetes")
    dm.setup()
    assert dm.num_classes is None and dm.num_targets == 1 and dm.input_shape == (10,)
    y_train = _targets(dm.train_set)
    assert y_train.dtype == torch.float32
    assert dm.target_mean == pytest.approx([y_train.mean().item()])
    assert dm.target_std == pytest.approx([y_train.std().item()])
    y_all = torch.cat([y_train, _targets(dm.val_set), _targets(dm.test_set)])
    assert dm.target_mean != pytest.approx([y_all.mean().item()])  # the training split's, not all data's


def test_regression_rejects_num_classes():
    dm = SklearnTabular(name="diabetes", num_classes=3)
    with pytest.raises(DataError, match="data.num_classes=3 was given but SklearnTabular is a regression dataset"):
        dm.setup()


# --- split_indices -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "val, test, message",
    [
        (1.2, 0.1, r"data.val_split=1.2 must be a fraction in \[0, 1\)"),
        (0.1, -0.1, r"data.test_split=-0.1 must be a fraction"),
        (0.5, 0.5, r"val_split \+ data.test_split = 1.00 leaves no training data"),
        (0.7, 0.4, r"leaves no training data"),
    ],
)
def test_split_fractions_are_checked(val, test, message):
    with pytest.raises(DataError, match=message):
        split_indices(100, val, test, seed=0)


def test_stratified_split_of_too_few_samples_raises_data_error():
    labels = [0, 0, 0, 0, 1]  # one sample of class 1 cannot be in train and in a held-out split
    with pytest.raises(DataError, match=r"cannot split 5 samples .* stratified by label") as err:
        split_indices(5, 0.2, 0.2, seed=0, stratify=labels)
    assert type(err.value.__cause__) is ValueError  # sklearn's error, kept as the cause


def test_split_is_a_seeded_partition():
    train, val, test = split_indices(50, 0.2, 0.1, seed=3)
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(50))
    again = split_indices(50, 0.2, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def test_zero_fractions_give_empty_splits():
    train, val, test = split_indices(10, 0.0, 0.0, seed=0)
    assert np.array_equal(train, np.arange(10)) and len(val) == 0 and len(test) == 0


# --- loaders and setup -------------------------------------------------------------------------------
def test_digits_loaders_give_batches_of_batch_size(digits):
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.long
    val_batches = list(digits.val_dataloader())
    assert sum(len(b[1]) for b in val_batches) == len(digits.val_set)


@pytest.mark.parametrize("name, target_dtype", [("iris", torch.long), ("diabetes", torch.float32)])
def test_tabular_loaders_give_right_dtypes(name, target_dtype):
    dm = SklearnTabular(name=name, batch_size=8)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, dm.input_shape[0]) and x.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == target_dtype


def test_train_loader_shuffles_eval_loaders_do_not(digits):
    first = [next(iter(digits.train_dataloader()))[1] for _ in range(3)]
    assert not all(torch.equal(first[0], f) for f in first[1:])
    torch.testing.assert_close(next(iter(digits.test_dataloader()))[1], _targets(digits.test_set)[:16])


def test_loader_before_setup_raises():
    with pytest.raises(RuntimeError, match=r"setup\(\) must run before"):
        Digits().train_dataloader()


def test_setup_twice_keeps_the_same_datasets():
    dm = SklearnTabular(name="iris")
    dm.setup()
    train, val, test = dm.train_set, dm.val_set, dm.test_set
    dm.setup("test")
    assert dm.train_set is train and dm.val_set is val and dm.test_set is test


def test_batch_size_below_one_raises():
    with pytest.raises(DataError, match="data.batch_size=0 must be at least 1"):
        Digits(batch_size=0)


def test_the_cli_and_the_datamodules_import_scikit_learn_only_when_data_needs_it():
    # scikit-learn pulls in pandas: ~60 MiB and 0.2 s that an image or text run never uses.
    code = (
        "import sys, cli, datamodules; from zoo.lightning_cli import ZooCLI; "
        "print(sorted(m for m in ('sklearn', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
