"""Tabular datamodules: the scikit-learn sets that ship with the install."""

from __future__ import annotations

from functools import cached_property
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaselineData, ZooDataModule, fit_standardizer, split_indices
from datamodules.in_memory import BatchedTensorDataset

# name -> (loader function in sklearn.datasets, task)
_SETS = {
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "iris": ("load_iris", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}


class SklearnTabular(ZooDataModule):
    """A scikit-learn tabular set: ``breast_cancer`` (binary), ``wine`` / ``iris`` (multiclass) or
    ``diabetes`` (regression).

    Features are standardised with the training split's statistics; classification splits are
    stratified; regression targets' mean and std reach the model, which learns standardised targets.

    Args:
        name: which scikit-learn dataset.
        (the rest as in :class:`~datamodules.base.ZooDataModule`)
    """

    def __init__(
        self,
        name: Literal["breast_cancer", "wine", "iris", "diabetes"] = "breast_cancer",
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.15,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, val_split, test_split, seed, num_classes, drop_last=drop_last
        )
        self.name = name
        self.task = _SETS[name][1]

    @cached_property
    def _raw(self):  # the sklearn Bunch; small, loaded once
        import sklearn.datasets

        return getattr(sklearn.datasets, _SETS[self.name][0])()

    @cached_property
    def _splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stratify = self._raw.target if self.task == "classification" else None
        return split_indices(len(self._raw.target), self.val_split, self.test_split, self.seed, stratify)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self._raw.data.shape[1],)

    def _num_classes(self) -> Optional[int]:
        return len(self._raw.target_names) if self.task == "classification" else None

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self._raw.target_names] if self.task == "classification" else []

    @property
    def num_targets(self) -> Optional[int]:
        return 1 if self.task == "regression" else None

    def _train_targets(self) -> torch.Tensor:
        return torch.tensor(self._raw.target[self._splits[0]], dtype=torch.float32).view(-1, 1)

    @property
    def target_mean(self) -> Optional[list[float]]:
        return self._train_targets().mean(0).tolist() if self.task == "regression" else None

    @property
    def target_std(self) -> Optional[list[float]]:
        return self._train_targets().std(0).tolist() if self.task == "regression" else None

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        x = torch.tensor(self._raw.data, dtype=torch.float32)
        dtype = torch.long if self.task == "classification" else torch.float32
        y = torch.tensor(self._raw.target, dtype=dtype)
        train, val, test = self._splits
        mean, std = fit_standardizer(x[train], dim=(0,))
        x = (x - mean) / std
        train_set, val_set, test_set = (BatchedTensorDataset(x[i], y[i]) for i in (train, val, test))
        return train_set, val_set, test_set

    def baseline_data(self) -> BaselineData:
        """The raw (unstandardised) features of train + validation and of the test split."""
        train, val, test = self._splits
        learn = np.sort(np.concatenate([train, val]))
        x, y = np.asarray(self._raw.data, dtype=np.float64), np.asarray(self._raw.target)
        y = y.astype(np.int64) if self.task == "classification" else y.astype(np.float64).reshape(-1, 1)
        return BaselineData("table", x[learn], y[learn], x[test], y[test])
