"""The base datamodule: seeded splits, loaders, and the facts a model needs about the data.

Subclasses implement :meth:`ZooDataModule.build` (return the three datasets, having fitted any
normalisation on the training split) and the metadata properties the CLI links into the model:
``num_classes`` (classification) or ``num_targets`` / ``target_mean`` / ``target_std`` (regression),
and ``input_shape``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from zoo.errors import DataError


def split_indices(
    n: int, val_split: float, test_split: float, seed: int, stratify: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / val / test indices; stratified by label when ``stratify`` is given.

    ``val_split`` and ``test_split`` are fractions of the whole set; a zero fraction gives an empty split.
    """
    for name, frac in (("val_split", val_split), ("test_split", test_split)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"data.{name}={frac} must be a fraction in [0, 1)")
    if val_split + test_split >= 1.0:
        raise DataError(f"data.val_split + data.test_split = {val_split + test_split:.2f} leaves no training data")
    try:
        return _split(n, val_split, test_split, seed, stratify)
    except ValueError as err:  # sklearn's: too few samples of a class, or a split smaller than the classes
        raise DataError(
            f"cannot split {n} samples into val_split={val_split} / test_split={test_split}"
            f"{' stratified by label' if stratify is not None else ''}: {err}. Use more data or other fractions"
        ) from err


def _split(
    n: int, val_split: float, test_split: float, seed: int, stratify: Optional[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(n)
    labels = np.asarray(stratify) if stratify is not None else None
    test = np.array([], dtype=int)
    if test_split > 0:
        idx, test = train_test_split(idx, test_size=test_split, random_state=seed, stratify=labels)
        labels = labels[idx] if labels is not None else None
    val = np.array([], dtype=int)
    if val_split > 0:
        idx, val = train_test_split(
            idx, test_size=val_split / (1.0 - test_split), random_state=seed + 1, stratify=labels
        )
    return np.sort(idx), np.sort(val), np.sort(test)


class ZooDataModule(LightningDataModule):
    """Common arguments and loaders of the zoo's datamodules.

    Args:
        data_dir: where dataset files are read from (and downloaded to, where a dataset downloads).
        batch_size: samples per training batch (evaluation uses the same).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_split: fraction of the data held out for validation (where the data has no own split).
        test_split: fraction held out for testing (where the data has no own test split).
        seed: seeds the splits, so they are the same on every run and every process.
        num_classes: optional check: the number of classes you expect; the data must agree.
    """

    task: str = "classification"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"data.batch_size={batch_size} must be at least 1")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        self.expected_num_classes = num_classes
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    # --- what subclasses provide ----------------------------------------------------------------
    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load the data and return ``(train, val, test)`` datasets of ``(input, target)`` pairs."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch dimension."""
        raise NotImplementedError

    def _num_classes(self) -> Optional[int]:
        """The number of classes found in the data (None for regression)."""
        return None

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names, index-aligned with the labels."""
        return [str(i) for i in range(self.num_classes or 0)]

    @property
    def vocab_size(self) -> Optional[int]:
        """Size of the token vocabulary (text data only)."""
        return None

    @property
    def num_targets(self) -> Optional[int]:
        """Number of regression targets (None for classification)."""
        return None

    @property
    def target_mean(self) -> Optional[list[float]]:
        return None

    @property
    def target_std(self) -> Optional[list[float]]:
        return None

    # --- shared behaviour -----------------------------------------------------------------------
    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes, checked against the ``num_classes`` the user gave, if any."""
        found = self._num_classes()
        expected = self.expected_num_classes
        if expected is not None and found is not None and expected != found:
            raise DataError(
                f"data.num_classes={expected} but {type(self).__name__} has {found} classes; "
                f"remove data.num_classes (it is read from the data) or fix the data"
            )
        if expected is not None and found is None:
            raise DataError(f"data.num_classes={expected} was given but {type(self).__name__} is a regression dataset")
        return found

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.num_classes  # noqa: B018  (checks an explicit num_classes against the data first)
            train, val, test = self.build()
            if len(train) == 0:
                raise DataError(f"{type(self).__name__}: the training split is empty; check data_dir and the splits")
            self.train_set, self.val_set, self.test_set = train, val, test

    def collate_fn(self) -> Optional[Callable[[list[Any]], Any]]:
        """How samples become a batch; None is PyTorch's default stacking."""
        return None

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("datamodule.setup() must run before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: class names, and what new inputs need (statistics, vocabulary)."""
        return {"class_names": self.class_names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored_state = dict(state_dict)

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """New inputs read from ``path`` and prepared the way the training data was, for `zoo predict`:
        a dataset of ``(input, dummy target)`` pairs and one name per sample (file name or row number)."""
        raise DataError(f"{type(self).__name__} cannot read new inputs for prediction (zoo predict)")


def fit_standardizer(x: torch.Tensor, dim: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x`` over ``dim`` (fitted on the training split only); std floored at 1e-8."""
    mean = x.mean(dim=tuple(dim), keepdim=True)
    std = x.std(dim=tuple(dim), keepdim=True).clamp_min(1e-8)
    return mean, std
