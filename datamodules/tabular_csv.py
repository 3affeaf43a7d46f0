"""Your own table: a CSV file of numeric and categorical columns with one target column.

What is learnt from the training split, and kept in the checkpoint (``state_dict``) so that `zoo predict` reads
a new CSV the same way: the columns, each numeric column's median (fills missing values), mean and std
(standardise), which columns had missing values (each gets a 0/1 indicator column), each categorical column's
categories (codes 1..K; 0 is a missing or unseen category), and the classes, or the target's mean and std.

A sample is one float vector: standardised numeric columns, then the missing-indicators, then one code per
categorical column; ``categories`` (each column's number of codes) reaches the model, whose ``tabular_mlp``
backbone embeds the codes.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaselineData, ZooDataModule, split_indices
from datamodules.csv_table import MISSING, Table, as_number, category_key, column_kind, numbers, read_table
from datamodules.in_memory import BatchedTensorDataset
from zoo.errors import DataError

MAX_AUTO_CLASSES = 20  # task auto: an integer target with at most this many distinct values holds class labels


class TabularCSV(ZooDataModule):
    """Your own table: a CSV file with a header row, feature columns and one target column.

    Numeric columns are standardised with the training split's statistics; a missing value (an empty cell, or
    ``NA``, ``N/A``, ``NaN``, ``null``, ``None``, ``?``) becomes the training median, and each column that had
    missing values in training gets a 0/1 missing-indicator column. Categorical columns become integer codes
    (0: missing, or a category training never saw) that the model embeds: use ``model.backbone: tabular_mlp``.

    Args:
        train_file: the training CSV (a ``.tsv`` / ``.tab`` file is read tab-separated).
        target_column: the column to predict.
        val_file: a validation CSV; without one, a seeded ``val_split`` of the training file (stratified by class).
        test_file: a test CSV; without one, a seeded ``test_split`` of the training file.
        feature_columns: the columns the model reads; default every column but the target.
        categorical_columns: the categorical feature columns. Default: those whose values are not numbers; integer
            columns stay numeric (their order carries meaning, and an integer id column is better dropped from
            ``feature_columns`` than embedded), so list a column of integer codes here to embed it.
        task: ``classification``, ``regression``, or ``auto``: a target of words is classification, a target of
            integers with at most 20 distinct values too, any other numeric target regression.
        (the rest as in :class:`~datamodules.base.ZooDataModule`)
    """

    def __init__(
        self,
        train_file: str,
        target_column: str,
        val_file: Optional[str] = None,
        test_file: Optional[str] = None,
        feature_columns: Optional[list[str]] = None,
        categorical_columns: Optional[list[str]] = None,
        task: Literal["auto", "classification", "regression"] = "auto",
        data_dir: str = "data",
        batch_size: int = 64,
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
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.target_column = target_column
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.categorical_columns = list(categorical_columns) if categorical_columns is not None else None
        self.asked_task = task

    # --- reading the training file --------------------------------------------------------------
    @cached_property
    def _train_table(self) -> Table:
        table = read_table(self.train_file)
        table.require([self.target_column], "target column")
        return table

    @cached_property
    def _features(self) -> list[str]:
        table = self._train_table
        features = self.feature_columns
        if features is None:
            features = [c for c in table.columns if c != self.target_column]
        table.require(features, "feature column(s)")
        if self.target_column in features:
            raise DataError(f"data.feature_columns lists the target column {self.target_column!r}")
        unknown = [c for c in self.categorical_columns or [] if c not in features]
        if unknown:
            raise DataError(f"data.categorical_columns lists {unknown}, which are not feature columns {features}")
        if not features:
            raise DataError(f"{self.train_file} has no feature columns: only the target {self.target_column!r}")
        return features

    @cached_property
    def _labels(self) -> tuple[str, list[str], np.ndarray]:
        """The task, the class names (classification) and the training file's targets (class indices or values)."""
        table, target = self._train_table, self.target_column
        cells = table.column(target)
        for i, cell in enumerate(cells):
            if cell.lower() in MISSING:
                raise DataError(f"{table.where(i, target)}: the target is missing; fill it in or remove the row")
        values = [as_number(c) for c in cells]
        found = [v for v in values if v is not None]
        numeric = len(found) == len(values)
        task = self.asked_task
        if task == "auto":
            few_integers = numeric and all(v.is_integer() for v in found) and len(set(found)) <= MAX_AUTO_CLASSES
            task = "classification" if not numeric or few_integers else "regression"
        if task == "regression":
            return task, [], numbers(table, target, why=" (data.task: regression)")
        keys = [category_key(c) for c in cells]
        names = sorted(set(keys), key=lambda k: (float(k), k) if numeric else (0.0, k))
        if len(names) < 2:
            raise DataError(
                f"{self.train_file}, column {target!r}: every row has the class {names[0]!r}; a "
                "classifier needs at least two classes (for numbers to predict, set data.task: "
                "regression)"
            )
        index = {name: k for k, name in enumerate(names)}
        return task, names, np.array([index[k] for k in keys], dtype=np.int64)

    @cached_property
    def _splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        task, _, y = self._labels
        val = self.val_split if self.val_file is None else 0.0
        test = self.test_split if self.test_file is None else 0.0
        return split_indices(len(y), val, test, self.seed, stratify=y if task == "classification" else None)

    @cached_property
    def table_state(self) -> dict[str, Any]:
        """What was learnt from the training split; restored from a checkpoint by :meth:`load_state_dict`."""
        table, features, train = self._train_table, self._features, self._splits[0]
        if self.categorical_columns is not None:  # the user's list is the whole list
            kinds = {c: "categorical" if c in self.categorical_columns else "numeric" for c in features}
        else:
            kinds = {c: column_kind(table, c) for c in features}
        numeric = [c for c in features if kinds[c] == "numeric"]
        categorical = [c for c in features if kinds[c] == "categorical"]
        why = "; list it in data.categorical_columns if its values are categories"
        median, mean, std, indicators = {}, {}, {}, []
        for c in numeric:
            x = numbers(table, c, train, why)
            missing = np.isnan(x)
            median[c] = float(np.median(x[~missing])) if (~missing).any() else 0.0
            x[missing] = median[c]
            mean[c], spread = float(x.mean()), float(x.std())
            std[c] = spread if spread > 1e-8 else 1.0
            if missing.any():
                indicators.append(c)
        vocab = {}
        for c in categorical:
            cells = table.column(c)
            vocab[c] = sorted({category_key(cells[i]) for i in train.tolist() if cells[i].lower() not in MISSING})
        task, class_names, y = self._labels
        state: dict[str, Any] = {
            "target_column": self.target_column,
            "task": task,
            "class_names": class_names,
            "features": features,
            "numeric": numeric,
            "categorical": categorical,
            "median": median,
            "mean": mean,
            "std": std,
            "indicators": indicators,
            "vocab": vocab,
        }
        if task == "regression":
            spread = float(y[train].std(ddof=1)) if len(train) > 1 else 0.0
            state["target_mean"], state["target_std"] = float(y[train].mean()), spread if spread > 1e-8 else 1.0
        return state

    # --- the facts the model needs --------------------------------------------------------------
    @property
    def task(self) -> str:  # type: ignore[override]  # read-only here: the training file says
        return self.table_state["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.table_state["class_names"])

    def _num_classes(self) -> Optional[int]:
        return len(self.class_names) if self.task == "classification" else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        state = self.table_state
        return (len(state["numeric"]) + len(state["indicators"]) + len(state["categorical"]),)

    @property
    def categories(self) -> Optional[list[int]]:
        state = self.table_state
        return [len(state["vocab"][c]) + 1 for c in state["categorical"]] or None

    @property
    def num_targets(self) -> Optional[int]:
        return 1 if self.task == "regression" else None

    @property
    def target_mean(self) -> Optional[list[float]]:
        return [self.table_state["target_mean"]] if self.task == "regression" else None

    @property
    def target_std(self) -> Optional[list[float]]:
        return [self.table_state["target_std"]] if self.task == "regression" else None

    # --- encoding ---------------------------------------------------------------------------------
    def _check_columns(self, table: Table, with_target: bool) -> None:
        state = self.table_state
        table.require(state["features"], f"feature column(s) (the model reads them; trained on {self.train_file})")
        if with_target:
            table.require([state["target_column"]], "target column")

    def raw_features(self, table: Table, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(numbers, codes)``: the numeric columns in their own units (NaN where missing), and the categorical
        columns' codes (-1 where missing, 0 for a category unseen in training)."""
        state = self.table_state
        rows = np.arange(len(table.rows)) if rows is None else rows
        why = f" in {self.train_file}"
        x = np.stack([numbers(table, c, rows, why) for c in state["numeric"]], 1) if state["numeric"] else None
        codes = np.zeros((len(rows), len(state["categorical"])), dtype=np.int64)
        for j, c in enumerate(state["categorical"]):
            index = {k: i + 1 for i, k in enumerate(state["vocab"][c])}
            cells = table.column(c)
            codes[:, j] = [-1 if cells[i].lower() in MISSING else index.get(category_key(cells[i]), 0) for i in rows]
        return (x if x is not None else np.zeros((len(rows), 0))), codes

    def encode(self, table: Table, rows: Optional[np.ndarray] = None) -> torch.Tensor:
        """The model's inputs ``(N, input_shape[0])``: standardised numbers, missing-indicators, codes."""
        state = self.table_state
        x, codes = self.raw_features(table, rows)
        missing = np.isnan(x)
        numeric = state["numeric"]
        median, mean, std = (np.array([state[k][c] for c in numeric]) for k in ("median", "mean", "std"))
        filled = np.where(missing, median, x)
        indicators = missing[:, [numeric.index(c) for c in state["indicators"]]]
        out = np.concatenate([(filled - mean) / std, indicators, np.maximum(codes, 0)], axis=1)
        return torch.tensor(out, dtype=torch.float32)

    def targets(self, table: Table, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Class indices, or the values in their own units ``(N, 1)``; a class training lacks fails naming its row."""
        state, target = self.table_state, self.table_state["target_column"]
        rows = np.arange(len(table.rows)) if rows is None else rows
        if state["task"] == "regression":
            y = numbers(table, target, rows)
            if np.isnan(y).any():
                i = int(rows[np.isnan(y).argmax()])
                raise DataError(f"{table.where(i, target)}: the target is missing; fill it in or remove the row")
            return y.reshape(-1, 1)
        index = {name: k for k, name in enumerate(state["class_names"])}
        cells, out = table.column(target), np.empty(len(rows), dtype=np.int64)
        for k, i in enumerate(rows.tolist()):
            key = category_key(cells[i])
            if cells[i].lower() in MISSING:
                raise DataError(f"{table.where(i, target)}: the target is missing; fill it in or remove the row")
            if key not in index:
                raise DataError(
                    f"{table.where(i, target)}: the class {cells[i]!r} is not among the training "
                    f"file's classes {state['class_names']} ({self.train_file})"
                )
            out[k] = index[key]
        return out

    def _split_tables(self) -> list[tuple[Table, Optional[np.ndarray]]]:
        """Each split's table and rows of it (None: all rows), train / val / test."""
        train, val, test = self._splits
        out: list[tuple[Table, Optional[np.ndarray]]] = [(self._train_table, train)]
        for path, rows in ((self.val_file, val), (self.test_file, test)):
            if path is None:
                out.append((self._train_table, rows))
            else:
                table = read_table(path)
                self._check_columns(table, with_target=True)
                out.append((table, None))
        return out

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        datasets = []
        for table, rows in self._split_tables():
            y = torch.from_numpy(self.targets(table, rows))  # (N,) class indices or (N, 1) values
            y = y.float() if self.task == "regression" else y
            datasets.append(BatchedTensorDataset(self.encode(table, rows), y))
        train, val, test = datasets
        return train, val, test

    def baseline_data(self) -> BaselineData:
        """Train (+ val) and test as arrays: numbers in their own units with NaN where missing, then the codes of
        the categorical columns (NaN where missing, 0 for a category unseen in training)."""
        (train, train_rows), (val, val_rows), (test, test_rows) = self._split_tables()

        def arrays(table: Table, rows: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            x, codes = self.raw_features(table, rows)
            y = self.targets(table, rows)
            return np.concatenate([x, np.where(codes < 0, np.nan, codes)], axis=1), y

        x_train, y_train = arrays(train, train_rows)
        x_val, y_val = arrays(val, val_rows)
        x_test, y_test = arrays(test, test_rows)
        num_numeric = len(self.table_state["numeric"])
        categorical = list(range(num_numeric, x_train.shape[1])) or None
        return BaselineData(
            "table", np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), x_test, y_test, categorical
        )

    # --- checkpoints and new inputs ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "table": self.table_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The cached property, restored without reading the training file (which may be elsewhere now).
        self.__dict__["table_state"] = dict(state_dict["table"])

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """The rows of a CSV with the feature columns the model was trained on (the target may be absent; other
        columns are ignored), prepared with the training statistics. Samples are named by row (1 = the first)."""
        table = read_table(path)
        self._check_columns(table, with_target=False)
        x = self.encode(table)
        return BatchedTensorDataset(x, torch.zeros(len(x), dtype=torch.long)), [str(i + 1) for i in range(len(x))]
