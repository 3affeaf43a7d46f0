"""A CSV table's cells, read as text with the line each row comes from, so every error names file, line, column.

:class:`datamodules.TabularCSV` reads its files with these; numbers and categories are told apart here.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from zoo.errors import DataError, did_you_mean

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # lowercased cells read as a missing value


def as_number(value: str) -> Optional[float]:
    """The finite number a cell holds, NaN for a missing cell, None for anything else."""
    if value.lower() in MISSING:
        return math.nan
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def category_key(value: str) -> str:
    """One spelling per category: numbers as their value (``1``, ``1.0`` and ``01`` are the same), text as is."""
    number = as_number(value)
    if number is None or math.isnan(number):
        return value
    return str(int(number)) if number.is_integer() else repr(number)


@dataclass
class Table:
    """A CSV file's cells as stripped strings, with the line of the file each row starts on (1 = header)."""

    path: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        j = self.columns.index(name)
        return [row[j] for row in self.rows]

    def where(self, i: int, column: str) -> str:
        """``path, line N, column 'c'`` of row ``i``, for error messages."""
        return f"{self.path}, line {self.lines[i]}, column {column!r}"

    def require(self, names: list[str], what: str) -> None:
        """A DataError naming the file, the absent columns and the columns there are."""
        absent = [n for n in names if n not in self.columns]
        if absent:
            hint = did_you_mean(absent[0], self.columns, n=1, form=" (did you mean {}?)")
            raise DataError(
                f"{self.path} has no {what} {', '.join(repr(a) for a in absent)}{hint}; its columns "
                f"are: {', '.join(self.columns)}"
            )


def read_table(path: str) -> Table:
    """Read a CSV (TSV for ``.tsv`` / ``.tab`` files) with a header row; blank lines are skipped."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    delimiter = "\t" if os.path.splitext(path)[1].lower() in (".tsv", ".tab") else ","
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(f"{path} is empty: a table needs a header row of column names, then one row per sample")
            columns = [h.strip() for h in header]
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:
                raise DataError(f"{path}, line 1: the header names the column(s) {twice} more than once")
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(columns)}")
                rows.append([cell.strip() for cell in row])
                lines.append(line)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({err})") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows of data")
    return Table(path, columns, rows, lines)


def numbers(table: Table, column: str, rows: Optional[np.ndarray] = None, why: str = "") -> np.ndarray:
    """A numeric column as floats (NaN where missing); a DataError at the first cell that is not a number."""
    cells = table.column(column)
    index = range(len(cells)) if rows is None else rows.tolist()
    out = np.empty(len(index), dtype=np.float64)
    for k, i in enumerate(index):
        number = as_number(cells[i])
        if number is None:
            raise DataError(f"{table.where(i, column)}: {cells[i]!r} is not a number, and this column is numeric{why}")
        out[k] = number
    return out


def column_kind(table: Table, column: str) -> str:
    """``numeric`` where every present cell is a number, ``categorical`` where most are not; a column of numbers
    with a few words in it is more likely a typo than categories, and fails naming the first word."""
    cells = [c for c in table.column(column) if c.lower() not in MISSING]
    words = [i for i, c in enumerate(table.column(column)) if as_number(c) is None]
    if not words:
        return "numeric"
    if len(words) * 2 < len(cells):
        i = words[0]
        raise DataError(
            f"{table.where(i, column)}: {table.rows[i][table.columns.index(column)]!r} is not a number, "
            f"but {len(cells) - len(words)} of the column's {len(cells)} values are; fix it, leave the "
            "cell empty (missing), or list the column in data.categorical_columns"
        )
    return "categorical"
