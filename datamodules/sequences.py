"""Sequence datamodules: UEA / UCR time-series classification from ``.ts`` files, and the padded batches
that sequence and text data share.

Batches are ``({"x": x, "mask": mask}, y)``: ``x`` is ``(B, T, C)`` floats (or ``(B, T)`` token ids for
text), ``mask`` is ``(B, T)``, True at real steps, with padding only at the end of each sequence, and ``T``
is the longest sequence in that batch (padded when the batch is collated, not ahead of time).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from functools import cached_property, partial
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from datamodules.augment import Augmented, AugmentSpec, build_series_augment
from datamodules.base import BaselineData, ZooDataModule, split_indices
from datamodules.in_memory import StackedBatch
from zoo.errors import ConfigError, DataError


# --- what sequence and text datamodules share --------------------------------------------------------
class VariableLengthDataset(Dataset):
    """Samples of different lengths: ``(sequence, label)`` with ``sequence`` ``(T_i, C)`` or ``(T_i,)``.

    Where every sequence has the same shape they are kept stacked, and a batch is read at once (a
    :class:`~datamodules.in_memory.StackedBatch`, which :func:`pad_collate` passes through).
    """

    def __init__(self, sequences: list[torch.Tensor], labels: torch.Tensor) -> None:
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        same = len(sequences) > 0 and torch.is_tensor(labels) and len({tuple(s.shape) for s in sequences}) == 1
        self.stacked = torch.stack(sequences) if same else None  # (N, T, ...)
        self.sequences = list(self.stacked) if self.stacked is not None else sequences  # views of the stack
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sequences[i], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        if self.stacked is None:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        return StackedBatch(self.stacked[index], self.labels[index])


class PaddedBatch(Sequence):
    """A batch read at once and padded already: ``x`` ``(B, T, ...)``, ``mask`` ``(B, T)``, labels ``(B,)``.

    It is also the sequence of its samples (``batch[i]`` is ``(x[i] up to its length, y[i])``), so a collate that
    does not know it still gets the list of samples it expects.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.x, self.mask, self.labels = x, mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]  # ints only
        return self.x[i, : int(self.mask[i].sum())], self.labels[i]


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_value: float = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pads a batch at the end to its longest sequence: ``({"x": (B, T, ...), "mask": (B, T)}, y)``."""
    if isinstance(batch, PaddedBatch):  # read at once, padded already (datamodules.tokens)
        return {"x": batch.x, "mask": batch.mask}, batch.labels
    if isinstance(batch, StackedBatch):  # sequences of one length, read at once: nothing to pad
        x, labels = batch.fields
        return {"x": x, "mask": torch.ones(x.shape[:2], dtype=torch.bool)}, labels
    sequences, labels = zip(*batch)
    lengths = torch.tensor([len(s) for s in sequences])
    x = pad_sequence(list(sequences), batch_first=True, padding_value=pad_value)
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return {"x": x, "mask": mask}, torch.stack(labels)


class PaddedSequenceDataModule(ZooDataModule):
    """A datamodule whose loaders pad each batch to its longest sequence (see :func:`pad_collate`)."""

    @property
    def pad_value(self) -> float:
        """What padded steps of ``x`` hold (the mask is what marks them)."""
        return 0

    def collate_fn(self) -> Callable[[list[Any]], Any]:
        return partial(pad_collate, pad_value=self.pad_value)  # a partial pickles into workers


def sorted_labels(labels: Sequence[str]) -> list[str]:
    """The unique labels, sorted numerically when every one is a finite number, else as strings."""
    unique = set(labels)
    try:
        numbers = {s: float(s) for s in unique}
    except ValueError:
        return sorted(unique)
    if not all(math.isfinite(v) for v in numbers.values()):
        return sorted(unique)
    return sorted(unique, key=lambda s: (numbers[s], s))


# --- the .ts format ----------------------------------------------------------------------------------
def _floats(text: str, path: str, lineno: int) -> np.ndarray:
    tokens = text.split(",")
    try:
        return np.array(tokens, dtype=np.float64)
    except ValueError:
        pass
    values = []
    for token in tokens:  # the slow path: '?' marks a missing value
        token = token.strip()
        try:
            values.append(math.nan if token == "?" else float(token))
        except ValueError:
            raise DataError(f"{path}, line {lineno}: {token!r} is not a number (nor '?' for missing)") from None
    return np.array(values, dtype=np.float64)


def read_ts(path: str, labelled: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """Reads a UEA / UCR ``.ts`` classification file (``labelled=False``: new cases to predict, with or
    without labels; ``@classLabel false`` files have none, and their labels come back empty).

    The header (``@problemName``, ``@dimensions``, ``@classLabel true ...``, ...) ends at ``@data``; then
    one case per line: dimensions separated by ``:``, values by ``,``, the class label last. ``?`` (or
    ``NaN``) is a missing value and becomes NaN. Cases may differ in length, but every dimension of one
    case has the same length, and every case has the same number of dimensions.

    Returns:
        The series, each ``(T_i, C)`` float64, and their class labels as written (aeon lowercases them).
    """
    if not os.path.isfile(path):
        raise DataError(f"{os.path.abspath(path)}: no such .ts file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, start=1)]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); is this a .ts file?") from None
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]  # no blanks nor comments
    header: dict[str, str] = {}
    for start, (lineno, line) in enumerate(lines):
        if not line.startswith("@"):
            raise DataError(f"{path}, line {lineno}: expected a header line '@...' or '@data' before the cases")
        key, _, value = line[1:].partition(" ")
        if key.lower() == "data":
            break
        header[key.lower()] = value.strip()
    else:
        raise DataError(f"{path}: no '@data' line; is this a .ts file?")
    has_labels = header.get("classlabel", "true").split(" ")[0].lower() == "true"
    if labelled or has_labels:
        expected, expected_from = _check_header(header, path)  # the number of dimensions, and who says so
    else:
        expected, expected_from = _check_header({**header, "classlabel": "true"}, path)
    series: list[np.ndarray] = []
    labels: list[str] = []
    for lineno, line in lines[start + 1 :]:
        *dims, label = line.split(":") if has_labels else [*line.split(":"), ""]
        if has_labels and (not dims or not label.strip()):
            raise DataError(f"{path}, line {lineno}: a case needs its class label after the last ':'")
        if expected is None:
            expected, expected_from = len(dims), f"the first case (line {lineno})"
        elif len(dims) != expected:
            raise DataError(
                f"{path}, line {lineno}: the case has {len(dims)} dimensions but {expected_from} has {expected}"
            )
        values = [_floats(d, path, lineno) for d in dims]
        if len({len(v) for v in values}) > 1:
            raise DataError(
                f"{path}, line {lineno}: the dimensions of one case have different lengths "
                f"{[len(v) for v in values]}; every dimension of a case must have the same length"
            )
        series.append(np.stack(values, axis=1))  # (T, C)
        labels.append(label.strip())
    if not series:
        raise DataError(f"{path}: no cases after '@data'")
    return series, labels


def _check_header(header: dict[str, str], path: str) -> tuple[Optional[int], str]:
    """Rejects what this reader does not support; returns the declared number of dimensions, if any."""
    if header.get("timestamps", "false").lower() == "true":
        raise DataError(f"{path}: '@timeStamps true' (values with time stamps) is not supported")
    if header.get("targetlabel", "false").lower() == "true":
        raise DataError(f"{path}: '@targetLabel true' is a regression problem; TimeSeries reads classification files")
    if header.get("classlabel", "true").split(" ")[0].lower() != "true":
        raise DataError(f"{path}: '@classLabel false': the cases have no class labels to learn")
    if "dimensions" in header:
        try:
            return int(header["dimensions"]), f"the header (@dimensions {header['dimensions']})"
        except ValueError:
            raise DataError(f"{path}: '@dimensions {header['dimensions']}' is not a whole number") from None
    if header.get("univariate", "").lower() == "true":
        return 1, "the header (@univariate true)"
    return None, ""


def aeon_ts_files(name: str) -> tuple[str, str]:
    """The ``_TRAIN.ts`` and ``_TEST.ts`` files of a dataset that aeon ships (found without importing aeon)."""
    how = "Or pass the files by path: data.train_file=<path>/<NAME>_TRAIN.ts data.test_file=<path>/<NAME>_TEST.ts"
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"data.name={name!r} finds the .ts files aeon ships, but aeon is not installed: pip install aeon. {how}"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    train, test = (os.path.join(root, name, f"{name}_{split}.ts") for split in ("TRAIN", "TEST"))
    if not (os.path.isfile(train) and os.path.isfile(test)):
        names = os.listdir(root) if os.path.isdir(root) else []
        shipped = sorted(d for d in names if os.path.isfile(os.path.join(root, d, f"{d}_TRAIN.ts")))
        raise DataError(f"aeon ships no .ts files for data.name={name!r} (it ships {shipped}). {how}")
    return train, test


# --- the datamodule ----------------------------------------------------------------------------------
class TimeSeries(PaddedSequenceDataModule):
    """Time-series classification from UEA / UCR ``.ts`` files (a ``_TRAIN`` and a ``_TEST`` file).

    The test file is the test split; a seeded, stratified validation split is carved from the training
    file. Series may differ in length: each batch is padded to its longest series, and ``input_shape`` is
    ``(longest series in both files, channels)``. Class indices follow the sorted labels of the training
    file (numerically sorted when all are numbers). Missing values (``?``) become 0 after normalisation:
    the mean of their channel under ``per_channel`` and ``per_series``; they are left out of the statistics.

    Args:
        name: a dataset that aeon ships (``JapaneseVowels``, ``BasicMotions``, ...), found in aeon's
            package; ``train_file`` / ``test_file`` override its files.
        train_file: path of the ``.ts`` training file.
        test_file: path of the ``.ts`` test file.
        normalize: ``per_channel`` z-normalises each channel with the mean and std of every real step of the
            training split (after the validation split is carved out); ``per_series`` z-normalises each
            series' channels by their own mean and std; ``none`` keeps the values. Population std; a std
            below 1e-8 (a constant channel) is taken as 1.
        data_dir: unused (the files are given by path); kept so every datamodule takes it.
        batch_size: series per batch.
        num_workers: DataLoader worker processes.
        val_split: fraction of the training file held out for validation.
        seed: seeds the validation split.
        num_classes: optional check of the number of classes in the training file.
        augment: time-series augmentations of the training split by name: ``jitter``, ``scaling``, ``shift``,
            ``time_warp`` (:mod:`datamodules.augment_series`). Each series is augmented alone, within its own
            length, after normalisation, so ``sigma`` is in units of the channel's std.
        mixup_alpha: MixUp of training batches, ``lam ~ Beta(alpha, alpha)``; 0 is off. Two series of different
            lengths mix into one as long as the longer; the shorter adds its padding (0) beyond its end.
        mix_prob: probability that a training batch is mixed.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        train_file: Optional[str] = None,
        test_file: Optional[str] = None,
        normalize: Literal["per_channel", "per_series", "none"] = "per_channel",
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.1,
        seed: int = 42,
        num_classes: Optional[int] = None,
        augment: Optional[list[AugmentSpec]] = None,
        mixup_alpha: float = 0.0,
        mix_prob: float = 1.0,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            num_workers,
            val_split,
            0.0,
            seed,
            num_classes,
            augment=augment,
            mixup_alpha=mixup_alpha,
            mix_prob=mix_prob,
            drop_last=drop_last,
        )
        self.series_augment = build_series_augment(self.augment, owner="TimeSeries")
        if normalize not in ("per_channel", "per_series", "none"):
            raise ConfigError(f"data.normalize={normalize!r} must be 'per_channel', 'per_series' or 'none'")
        if name is None and (train_file is None or test_file is None):
            raise ConfigError(
                "TimeSeries needs data.train_file and data.test_file (.ts files), "
                "or data.name of a dataset aeon ships (e.g. JapaneseVowels)"
            )
        self.name = name
        self.train_file = train_file
        self.test_file = test_file
        self.normalize = normalize

    @cached_property
    def files(self) -> tuple[str, str]:
        """The training and test ``.ts`` files."""
        if self.train_file is not None and self.test_file is not None:
            return self.train_file, self.test_file
        shipped = aeon_ts_files(self.name)  # type: ignore[arg-type]  # __init__ asks for name where a file is missing
        return self.train_file or shipped[0], self.test_file or shipped[1]

    @cached_property
    def _raw(self) -> tuple[list[np.ndarray], list[str], list[np.ndarray], list[str]]:
        train_file, test_file = self.files
        train_x, train_y = read_ts(train_file)
        test_x, test_y = read_ts(test_file)
        if train_x[0].shape[1] != test_x[0].shape[1]:
            raise DataError(
                f"{train_file} has {train_x[0].shape[1]} dimensions but {test_file} has {test_x[0].shape[1]}"
            )
        unknown = sorted_labels(list(set(test_y) - set(train_y)))
        if unknown:
            raise DataError(f"{test_file} has class labels {unknown} that the training file {train_file} lacks")
        return train_x, train_y, test_x, test_y

    @cached_property
    def class_names(self) -> list[str]:
        return sorted_labels(self._raw[1])

    def _num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        train_x, _, test_x, _ = self._raw
        return (max(len(s) for s in train_x + test_x), train_x[0].shape[1])

    def _targets(self, labels: list[str]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.class_names)}
        return torch.tensor([index[label] for label in labels], dtype=torch.long)

    @cached_property
    def _splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = self._targets(self._raw[1]).numpy()
        return split_indices(len(y), self.val_split, 0.0, self.seed, stratify=y)

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        train_x, train_y, test_x, test_y = self._raw
        train, val, _ = self._splits
        if self.normalize == "per_channel":  # every real step of the training split, per channel
            mean, std = _moments(np.concatenate([train_x[i] for i in train]), axis=0)
        else:
            mean, std = np.zeros(1), np.ones(1)
        # Kept in checkpoints, for new series: the normalisation, and the channels the model was built for.
        self.stats = {"mean": mean.tolist(), "std": std.tolist(), "channels": int(train_x[0].shape[1])}

        def dataset(series: list[np.ndarray], labels: list[str]) -> VariableLengthDataset:
            return VariableLengthDataset([self._prepare(s) for s in series], self._targets(labels))

        train_set = dataset([train_x[i] for i in train], [train_y[i] for i in train])
        if self.series_augment is not None:
            train_set = Augmented(train_set, self.series_augment)
        return train_set, dataset([train_x[i] for i in val], [train_y[i] for i in val]), dataset(test_x, test_y)

    def _prepare(self, series: np.ndarray) -> torch.Tensor:
        """One series normalised as the training data was: ``(T, C)`` float32, missing values 0."""
        if self.normalize == "per_series":
            mean, std = _moments(series, axis=0)
        else:
            mean, std = np.asarray(self.stats["mean"]), np.asarray(self.stats["std"])
        return torch.from_numpy(np.nan_to_num((series - mean) / std, nan=0.0)).float()

    def baseline_data(self) -> BaselineData:
        """Every series of the training file (train + validation) and of the test file, normalised as the model
        sees them, before padding: ``(T_i, C)`` each."""
        if getattr(self, "stats", None) is None:
            self.setup("test")  # the normalisation is fitted on the training split when the datasets are built
        train_x, train_y, test_x, test_y = self._raw

        def series(xs: list[np.ndarray]) -> list[np.ndarray]:
            return [self._prepare(s).numpy() for s in xs]

        return BaselineData(
            "series", series(train_x), self._targets(train_y).numpy(), series(test_x), self._targets(test_y).numpy()
        )

    def state_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "stats": getattr(self, "stats", None)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__["class_names"] = list(state_dict["class_names"])  # the cached property, without the files
        self.stats = state_dict.get("stats") or {"mean": [0.0], "std": [1.0]}

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """Every case of a ``.ts`` file (labels optional), normalised with the training statistics."""
        if not path.lower().endswith(".ts"):
            raise DataError(f"{path}: this model reads time series; give a .ts file (UEA / UCR format)")
        series, _ = read_ts(path, labelled=False)
        channels = self.stats.get("channels") or (len(self.stats["mean"]) if self.normalize == "per_channel" else None)
        if channels is not None and series[0].shape[1] != channels:
            raise DataError(
                f"{path}: its series have {series[0].shape[1]} dimensions; the model was trained on {channels}"
            )
        data = [self._prepare(s) for s in series]
        return VariableLengthDataset(data, torch.zeros(len(data), dtype=torch.long)), [str(i) for i in range(len(data))]


def _moments(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over ``axis``, ignoring NaN; an all-NaN or constant channel gets 0 and 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about all-NaN channels
        mean, std = np.nanmean(x, axis=axis), np.nanstd(x, axis=axis)
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.where(np.isnan(std) | (std < 1e-8), 1.0, std)
    return mean, std
