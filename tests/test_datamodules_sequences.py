"""TimeSeries: our .ts reader against aeon's, normalisation, padded batches, splits and the errors users see."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import TimeSeries
from datamodules.sequences import aeon_ts_files, pad_collate, read_ts, sorted_labels
from zoo.errors import ConfigError, DataError

HEADER = """# a comment
@problemName {name}
@timeStamps false
@missing true
@univariate false
@dimensions {dims}
@equalLength false
@classLabel true {labels}
@data
"""


def write_ts(path: Path, cases: list[tuple[np.ndarray, str]], dims: int | None = None) -> str:
    """A .ts file of ``(series (T, C), label)`` cases; NaN is written as '?'."""
    dims = dims if dims is not None else cases[0][0].shape[1]
    labels = " ".join(sorted({label for _, label in cases}))

    def dim(values: np.ndarray) -> str:
        return ",".join("?" if np.isnan(v) else repr(float(v)) for v in values)

    lines = [":".join(dim(s[:, c]) for c in range(s.shape[1])) + f":{label}" for s, label in cases]
    path.write_text(HEADER.format(name=path.stem, dims=dims, labels=labels) + "\n".join(lines) + "\n")
    return str(path)


def synthetic(n: int, seed: int, labels: tuple[str, ...] = ("a", "b")) -> list[tuple[np.ndarray, str]]:
    """Series of 5-30 steps, 2 channels far from standard: channel 0 ~ N(5, 2), channel 1 ~ N(-3, 0.5)."""
    rng = np.random.default_rng(seed)
    return [
        (np.stack([rng.normal(5, 2, t), rng.normal(-3, 0.5, t)], axis=1), labels[i % len(labels)])
        for i, t in enumerate(rng.integers(5, 31, size=n))
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("ts")
    return write_ts(root / "Syn_TRAIN.ts", synthetic(60, seed=0)), write_ts(root / "Syn_TEST.ts", synthetic(20, seed=1))


def _raw_split(dm: TimeSeries, split: str) -> list[np.ndarray]:
    train_x, _, test_x, _ = dm._raw
    if split == "test":
        return test_x
    return [train_x[i] for i in dm._splits[0 if split == "train" else 1]]


# --- the reader ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n_dims, lengths", [("JapaneseVowels", 12, (7, 29)), ("BasicMotions", 6, (100, 100))])
@pytest.mark.parametrize("split", ["TRAIN", "TEST"])
def test_reader_matches_aeon(name, n_dims, lengths, split):
    pytest.importorskip("aeon")
    from aeon.datasets import load_from_ts_file

    path = dict(zip(("TRAIN", "TEST"), aeon_ts_files(name)))[split]
    ours_x, ours_y = read_ts(path)
    aeon_x, aeon_y = load_from_ts_file(path)  # (C, T) per case; labels lowercased by aeon
    assert len(ours_x) == len(aeon_x) > 0
    for ours, theirs in zip(ours_x, aeon_x):
        assert ours.shape[1] == n_dims
        np.testing.assert_array_equal(ours.T, theirs)
    assert lengths[0] <= min(len(s) for s in ours_x) and max(len(s) for s in ours_x) <= lengths[1]
    assert [y.lower() for y in ours_y] == list(aeon_y)
    if name == "BasicMotions":
        assert set(ours_y) == {"Standing", "Running", "Walking", "Badminton"}  # we keep the file's spelling


def test_reader_parses_unequal_lengths_and_missing_values_exactly(tmp_path):
    path = tmp_path / "tiny.ts"
    path.write_text(
        HEADER.format(name="Tiny", dims=2, labels="a b")
        + "1.0,2.0,3.0:4.0,5.0,6.0:a\n"
        + "\n"  # blank lines are skipped
        + "0.5, ?:1.5,2.5:b\n"
        + "7,8,9,1e-3:-1,2,3,NaN:a\n"
    )
    x, y = read_ts(str(path))
    assert y == ["a", "b", "a"]
    np.testing.assert_array_equal(x[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(x[1], [[0.5, 1.5], [np.nan, 2.5]])
    np.testing.assert_array_equal(x[2], [[7, -1], [8, 2], [9, 3], [1e-3, np.nan]])
    assert all(s.dtype == np.float64 for s in x)


def test_sorted_labels_are_numeric_when_all_labels_are_numbers():
    assert sorted_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sorted_labels(["b", "10", "a", "2"]) == ["10", "2", "a", "b"]


# --- normalisation -------------------------------------------------------------------------------
def test_per_channel_is_fitted_on_the_training_split_only(files):
    dm = TimeSeries(train_file=files[0], test_file=files[1], val_split=0.2)
    dm.setup()
    train_steps = np.concatenate(_raw_split(dm, "train"))
    mean, std = train_steps.mean(0), train_steps.std(0)
    assert abs(mean[0] - 5) < 0.5 and abs(mean[1] + 3) < 0.2  # the raw data is far from standard
    steps = torch.cat(dm.train_set.sequences)  # every real step of the training split, (N, C)
    torch.testing.assert_close(steps.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(steps.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    for split, dataset in (("val", dm.val_set), ("test", dm.test_set)):
        for ours, raw in zip(dataset.sequences, _raw_split(dm, split)):
            np.testing.assert_allclose(ours.numpy(), (raw - mean) / std, atol=1e-5)
    assert torch.cat(dm.test_set.sequences).mean(0).abs().max() > 1e-3  # only close to 0: train's statistics


def test_per_series_standardises_each_series_by_itself(files):
    dm = TimeSeries(train_file=files[0], test_file=files[1], normalize="per_series")
    dm.setup()
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        for s in dataset.sequences:
            torch.testing.assert_close(s.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
            torch.testing.assert_close(s.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_none_keeps_values_and_missing_values_become_zero(tmp_path):
    cases = synthetic(10, seed=3)
    cases[0][0][1, 0] = np.nan
    train = write_ts(tmp_path / "M_TRAIN.ts", cases)
    test = write_ts(tmp_path / "M_TEST.ts", synthetic(4, seed=4))
    for normalize in ("none", "per_channel", "per_series"):
        dm = TimeSeries(train_file=train, test_file=test, normalize=normalize, val_split=0.0)
        dm.setup()
        first = dm.train_set.sequences[0]
        assert first[1, 0] == 0 and not torch.isnan(torch.cat(dm.train_set.sequences)).any()
        if normalize == "none":
            torch.testing.assert_close(first[2:], torch.tensor(cases[0][0][2:], dtype=torch.float32))


# --- batches, splits, metadata -------------------------------------------------------------------
def test_batches_are_padded_to_the_longest_series_with_masks(files):
    dm = TimeSeries(train_file=files[0], test_file=files[1], batch_size=8)
    assert dm.input_shape[1] == 2 and dm.num_classes == 2 and dm.class_names == ["a", "b"]  # before setup
    dm.setup()
    lengths = [len(s) for s in dm.test_set.sequences]
    assert dm.input_shape[0] == max(lengths + [len(s) for s in dm.train_set.sequences + dm.val_set.sequences])
    seen = 0
    for batch, y in dm.test_dataloader():
        x, mask = batch["x"], batch["mask"]
        true = torch.tensor(lengths[seen : seen + len(y)])
        assert x.dtype == torch.float32 and mask.dtype == torch.bool and y.dtype == torch.long
        assert x.shape == (len(y), true.max(), 2) and mask.shape == (len(y), true.max())
        assert torch.equal(mask.sum(1), true)
        assert torch.equal(mask, torch.arange(x.shape[1]) < true[:, None])  # padding only at the end
        assert (x[~mask] == 0).all()
        seen += len(y)
    assert seen == len(dm.test_set)
    (batch, y) = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[0] == 8 and batch["x"].shape[1] == batch["mask"].sum(1).max()


def test_pad_collate_of_token_ids():
    batch, y = pad_collate([(torch.tensor([5, 6]), torch.tensor(1)), (torch.tensor([7]), torch.tensor(0))], pad_value=9)
    assert torch.equal(batch["x"], torch.tensor([[5, 6], [7, 9]]))
    assert torch.equal(batch["mask"], torch.tensor([[True, True], [True, False]]))
    assert torch.equal(y, torch.tensor([1, 0]))


def test_same_seed_same_split_other_seed_differs(files):
    a, b, c = (TimeSeries(train_file=files[0], test_file=files[1], seed=s) for s in (7, 7, 8))
    for dm in (a, b, c):
        dm.setup()
    assert len(a.val_set) == 6 and len(a.train_set) == 54 and len(a.test_set) == 20
    assert all(torch.equal(p, q) for p, q in zip(a.val_set.sequences, b.val_set.sequences))
    assert np.array_equal(a._splits[1], b._splits[1]) and not np.array_equal(a._splits[1], c._splits[1])
    assert torch.bincount(a.val_set.labels).tolist() == [3, 3]  # stratified


def test_name_finds_the_files_aeon_ships():
    if importlib.util.find_spec("aeon") is None:
        pytest.skip("aeon is not installed")
    dm = TimeSeries(name="JapaneseVowels", batch_size=16)
    assert Path(dm.files[0]).name == "JapaneseVowels_TRAIN.ts" and Path(dm.files[1]).name == "JapaneseVowels_TEST.ts"
    assert dm.input_shape == (29, 12) and dm.num_classes == 9 and dm.class_names == [str(i) for i in range(1, 10)]
    assert dm.vocab_size is None
    dm.setup()
    assert (len(dm.train_set) + len(dm.val_set), len(dm.test_set)) == (270, 370)
    batch, y = next(iter(dm.val_dataloader()))
    assert batch["x"].shape[2] == 12 and y.max() < 9


# --- errors --------------------------------------------------------------------------------------
def test_mismatched_dimensions_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.ts"
    path.write_text(HEADER.format(name="Bad", dims=2, labels="a") + "1,2:3,4:a\n1,2:a\n")
    header = r"the header \(@dimensions 2\)"
    with pytest.raises(DataError, match=rf"{path}, line 11: the case has 1 dimensions but {header} has 2"):
        read_ts(str(path))
    (tmp_path / "nodims.ts").write_text(
        HEADER.format(name="Bad", dims=2, labels="a").replace("@dimensions 2\n", "") + "1:a\n1,2:3,4:a\n"
    )
    with pytest.raises(DataError, match=r"nodims.ts, line 10: the case has 2 dimensions but the first case \(line 9\)"):
        read_ts(str(tmp_path / "nodims.ts"))
    (tmp_path / "ragged.ts").write_text(HEADER.format(name="Bad", dims=2, labels="a") + "1,2:3:a\n")
    with pytest.raises(DataError, match=r"ragged.ts, line 10: the dimensions of one case have different lengths"):
        read_ts(str(tmp_path / "ragged.ts"))


def test_bad_values_and_headers_are_named(tmp_path):
    (tmp_path / "word.ts").write_text(HEADER.format(name="W", dims=1, labels="a") + "1,x,3:a\n")
    with pytest.raises(DataError, match=r"word.ts, line 10: 'x' is not a number"):
        read_ts(str(tmp_path / "word.ts"))
    (tmp_path / "nodata.ts").write_text("@problemName X\n")
    with pytest.raises(DataError, match=r"nodata.ts: no '@data' line"):
        read_ts(str(tmp_path / "nodata.ts"))
    (tmp_path / "reg.ts").write_text("@targetLabel true\n@data\n1,2:0.5\n")
    with pytest.raises(DataError, match=r"regression problem"):
        read_ts(str(tmp_path / "reg.ts"))


def test_unknown_test_labels_are_named(tmp_path):
    train = write_ts(tmp_path / "U_TRAIN.ts", synthetic(10, seed=0, labels=("a", "b")))
    test = write_ts(tmp_path / "U_TEST.ts", synthetic(6, seed=1, labels=("a", "c", "d")))
    dm = TimeSeries(train_file=train, test_file=test)
    with pytest.raises(DataError, match=rf"{test} has class labels \['c', 'd'\] that the training file {train} lacks"):
        dm.setup()


def test_missing_file_is_named(tmp_path, files):
    missing = tmp_path / "nowhere_TRAIN.ts"
    with pytest.raises(DataError, match=rf"{missing}: no such .ts file"):
        TimeSeries(train_file=str(missing), test_file=files[1]).num_classes


def test_unknown_name_and_missing_aeon_say_how_to_pass_files(monkeypatch):
    if importlib.util.find_spec("aeon") is not None:
        with pytest.raises(DataError, match=r"aeon ships no .ts files for data.name='NoSuchSet' \(it ships \[.*'Jap"):
            TimeSeries(name="NoSuchSet").input_shape
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r"aeon is not installed: pip install aeon. Or pass the files by path"):
        TimeSeries(name="JapaneseVowels").input_shape


def test_neither_name_nor_files_is_a_config_error(files):
    with pytest.raises(ConfigError, match=r"needs data.train_file and data.test_file"):
        TimeSeries(train_file=files[0])
    with pytest.raises(ConfigError, match=r"data.normalize='global'"):
        TimeSeries(train_file=files[0], test_file=files[1], normalize="global")  # type: ignore[arg-type]


def test_wrong_num_classes_is_caught(files):
    with pytest.raises(DataError, match=r"data.num_classes=3 but TimeSeries has 2 classes"):
        TimeSeries(train_file=files[0], test_file=files[1], num_classes=3).setup()
