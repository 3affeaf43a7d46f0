"""Token ids kept compact: one ``(N, max_length)`` integer array per split, padded, with each text's length.

A text's ids used to be a tensor of its own (and, on the way, a Python list of Python ints): about 11 KB a row
at ``max_length`` 32 with a HuggingFace tokenizer, where the ids and mask a model reads need under 0.3 KB. Here
texts are tokenised a chunk at a time straight into one array of the smallest integer type that holds the
vocabulary (int16 for MiniLM's 30,522 ids), and a batch is cut from it already padded to its longest text:
the same ``({"x": (B, T) int64, "mask": (B, T) bool}, y)`` that padding per-text tensors gave.

The arrays are plain numpy arrays, or ``.npy`` files opened with ``np.load(mmap_mode="r")`` where the data
should not be held in memory (:class:`TokenWriter` with a directory): the operating system then pages in the
rows a batch reads.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.sequences import PaddedBatch

CHUNK = 1024  # texts tokenised at once: the tokenizer's output for a chunk (~6 KB a text) is all held beside the arrays


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest signed integer type that holds every id below ``vocab_size``."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max + 1 else np.int32)


class TokenDataset(Dataset):
    """Texts as token ids: ``ids`` ``(N, L)`` padded with ``pad_value`` after each text's ``lengths[i]`` ids.

    A sample is ``(ids (T_i,) int64, label)``, as a per-text tensor was; a batch of indices is read at once as a
    :class:`~datamodules.sequences.PaddedBatch` cut to its longest text.
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, labels: torch.Tensor, pad_value: int) -> None:
        if not len(ids) == len(lengths) == len(labels):
            raise ValueError(f"{len(ids)} texts, {len(lengths)} lengths and {len(labels)} labels")
        self.ids, self.lengths, self.labels, self.pad_value = ids, lengths, labels, pad_value

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.ids[i, : self.lengths[i]], dtype=np.int64)), self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> PaddedBatch:
        index = np.asarray(indices, dtype=np.int64)
        lengths = torch.from_numpy(self.lengths[index].astype(np.int64))
        longest = int(lengths.max()) if len(index) else 0
        x = torch.from_numpy(np.array(self.ids[index, :longest], dtype=np.int64))  # a copy, also of a memory map
        mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        return PaddedBatch(x, mask, self.labels[torch.from_numpy(index)])

    @property
    def sequences(self) -> Sequence[torch.Tensor]:
        """Each text's ids, ``(T_i,)`` int64, made when read."""
        return _Rows(self)

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.lengths.nbytes + self.labels.numel() * self.labels.element_size())


class _Rows(Sequence):
    def __init__(self, dataset: TokenDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]  # ints only
        return self.dataset[i][0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))


class TokenWriter:
    """Scatters the token ids of one file's texts, in file order, into the arrays of the splits they belong to.

    Args:
        where: each row's split (an index into ``sizes``) and its position in that split.
        sizes: the number of rows of each split.
        max_length: the arrays' width.
        dtype: the arrays' integer type.
        pad_value: what the arrays hold after each text's ids.
        directory: None keeps the arrays in memory; a directory writes them there as ``.npy`` files
            (``{name}_ids.npy``, ``{name}_lengths.npy``), to be opened memory-mapped.
        names: the splits' names, for the files.
    """

    def __init__(
        self,
        where: tuple[np.ndarray, np.ndarray],
        sizes: Sequence[int],
        max_length: int,
        dtype: np.dtype,
        pad_value: int,
        directory: Optional[str] = None,
        names: Sequence[str] = (),
    ) -> None:
        self.split_of, self.position = where
        self.rows = 0
        self.ids: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        for k, n in enumerate(sizes):
            if directory is None:
                ids, lengths = np.full((n, max_length), pad_value, dtype=dtype), np.zeros(n, dtype=np.int32)
            else:
                stem = os.path.join(directory, names[k])
                ids = np.lib.format.open_memmap(f"{stem}_ids.npy", mode="w+", dtype=dtype, shape=(n, max_length))
                ids[:] = pad_value
                lengths = np.lib.format.open_memmap(f"{stem}_lengths.npy", mode="w+", dtype=np.int32, shape=(n,))
            self.ids.append(ids)
            self.lengths.append(lengths)

    def write(self, encoded: list[list[int]]) -> None:
        """The next texts' ids, in file order (truncated already)."""
        rows = slice(self.rows, self.rows + len(encoded))
        for seq, split, pos in zip(encoded, self.split_of[rows].tolist(), self.position[rows].tolist()):
            if split >= 0:  # -1: a row no split keeps
                self.ids[split][pos, : len(seq)] = seq
                self.lengths[split][pos] = len(seq)
        self.rows = rows.stop

    def close(self) -> None:
        for array in (*self.ids, *self.lengths):
            if isinstance(array, np.memmap):
                array.flush()


def encode_chunks(texts: Iterable[str], encode: Callable[[list[str]], list[list[int]]], writer: TokenWriter) -> None:
    """``encode`` each chunk of ``texts`` and hand its ids to ``writer``: only a chunk's lists are ever held."""
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == CHUNK:
            writer.write(encode(chunk))
            chunk = []
    if chunk:
        writer.write(encode(chunk))
    writer.close()


def load_split(directory: str, name: str) -> tuple[Any, Any]:
    """A split's ids and lengths written by :class:`TokenWriter`, memory-mapped read-only."""
    stem = os.path.join(directory, name)
    return np.load(f"{stem}_ids.npy", mmap_mode="r"), np.load(f"{stem}_lengths.npy", mmap_mode="r")
