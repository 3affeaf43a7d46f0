"""Text classification sets built from the Python standard library's own docstrings, for measuring the text
recipes on data nobody tuned them for (no download: the corpus ships with Python).

Each set takes the docstrings of the functions, classes and methods of a few standard-library packages and
labels each with its package (a topic); texts are unique, at least 40 characters. ``--out DIR`` writes
``<set>_train.csv`` / ``<set>_test.csv`` (a seeded, stratified 70/30 split) for every set:

    python scripts/stdlib_text_sets.py --out data/text_sets
    zoo fit --config configs/recipes/text_classification.yaml \
        --data.train_file data/text_sets/net_train.csv --data.test_file data/text_sets/net_test.csv
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import pkgutil
import random
import warnings
from pathlib import Path

SETS = {  # set name -> the packages (topics) whose docstrings it classifies
    "net": ["email", "http", "urllib", "xml", "html"],
    "runtime": ["asyncio", "concurrent", "multiprocessing", "threading", "unittest", "logging"],
    "data": ["json", "sqlite3", "csv", "pickle", "zipfile", "tarfile", "decimal"],
}
MIN_CHARS, MAX_CHARS = 40, 600


def modules_of(package: str) -> list[object]:
    """The package and its submodules that import on this machine (tests and GUI parts left out)."""
    root = importlib.import_module(package)
    found = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
        if any(part in info.name for part in ("test", "idle", "__main__")):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found.append(importlib.import_module(info.name))
        except Exception:  # platform-specific modules (windows_events, ...)
            continue
    return found


def docstrings(package: str) -> list[str]:
    """Unique docstrings of the package's own functions, classes and methods, whitespace collapsed."""
    texts: set[str] = set()
    for module in modules_of(package):
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [obj] + ([m for _, m in inspect.getmembers(obj)] if inspect.isclass(obj) else [])
            for member in members:
                doc = getattr(member, "__doc__", None) if callable(member) or inspect.isclass(member) else None
                if isinstance(doc, str):
                    text = " ".join(doc.split())[:MAX_CHARS]
                    if len(text) >= MIN_CHARS:
                        texts.add(text)
    return sorted(texts)


def write_set(name: str, packages: list[str], out: Path, seed: int = 0) -> tuple[int, int]:
    """Write ``<name>_train.csv`` and ``<name>_test.csv``; a text found in two packages is dropped."""
    by_text: dict[str, set[str]] = {}
    for package in packages:
        for text in docstrings(package):
            by_text.setdefault(text, set()).add(package)
    rows = [(text, next(iter(labels))) for text, labels in by_text.items() if len(labels) == 1]
    rng = random.Random(seed)
    train, test = [], []
    for package in packages:
        mine = [row for row in rows if row[1] == package]
        rng.shuffle(mine)
        cut = round(0.7 * len(mine))
        train += mine[:cut]
        test += mine[cut:]
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train), ("test", test)):
        with open(out / f"{name}_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(sorted(part))
    return len(train), len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/text_sets"))
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    args = parser.parse_args()
    for name in args.sets:
        n_train, n_test = write_set(name, SETS[name], args.out)
        print(f"{name}: {len(SETS[name])} topics, {n_train} train / {n_test} test texts -> {args.out}/{name}_*.csv")


if __name__ == "__main__":
    main()
