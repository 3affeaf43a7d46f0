"""`zoo predict --ckpt_path CKPT INPUT`: new images, texts and time series -> a CSV, from the checkpoint alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from tests.conftest import TINY, run_zoo


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN trained for 3 real epochs (about 0.9 accuracy)."""
    home = tmp_path_factory.mktemp("digits")
    (home / "configs").symlink_to(Path(__file__).resolve().parents[1] / "configs")
    done = run_zoo(
        "fit",
        "--config",
        "configs/experiments/digits_cnn.yaml",
        "--trainer.max_epochs=3",
        "--trainer.enable_progress_bar=false",
        "--test_after_fit=false",
        cwd=home,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return next((home / "runs/digits_cnn/version_0/checkpoints").glob("best-*.ckpt"))  # the lowest val/loss


def test_digit_images_are_classified_from_the_checkpoint_alone(digits_ckpt: Path, tmp_path: Path):
    raw = load_digits()
    folder = tmp_path / "new digits"
    (folder / "inverted").mkdir(parents=True)
    for i in range(40):  # light ink on dark, like the data; and dark ink on white paper, as people write
        pixels = (raw.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        Image.fromarray(255 - pixels).resize((32, 32)).save(folder / "inverted" / f"{i:02d}.png")
    out = tmp_path / "preds.csv"
    done = run_zoo("predict", "--ckpt_path", str(digits_ckpt), str(folder), "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "80 predictions (class probabilities) written" in done.stdout
    rows = _rows(out)
    assert list(rows[0])[:3] == ["input", "predicted", "probability"] and list(rows[0])[3:] == [
        f"p_{d}" for d in range(10)
    ]
    for row in rows:
        probs = [float(row[f"p_{d}"]) for d in range(10)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and float(row["probability"]) == max(probs)
    truth = {f"{i:02d}.png": str(raw.target[i]) for i in range(40)}
    plain = [r for r in rows if "inverted" not in r["input"]]
    inverted = [r for r in rows if "inverted" in r["input"]]
    accuracy = np.mean([r["predicted"] == truth[Path(r["input"]).name] for r in plain])
    assert accuracy >= 0.8, accuracy  # prepared exactly like the training images
    agree = np.mean([a["predicted"] == b["predicted"] for a, b in zip(plain, inverted)])
    assert agree >= 0.8, agree  # paper-coloured images are inverted and resized to the data's 8x8


def test_wrong_kind_of_input_is_named(digits_ckpt: Path, tmp_path: Path):
    ts = tmp_path / "cases.ts"
    ts.write_text("@problemName x\n@data\n1,2,3:a\n")
    done = run_zoo("predict", "--ckpt_path", str(digits_ckpt), str(ts), cwd=tmp_path)
    assert done.returncode == 2
    assert "this model reads images; give an image file" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_zoo("predict", "--ckpt_path", str(digits_ckpt), str(empty), cwd=tmp_path)
    assert done.returncode == 2 and "no image files" in done.stderr
    (empty / "broken.png").write_bytes(b"not a png")
    done = run_zoo("predict", "--ckpt_path", str(digits_ckpt), str(empty), cwd=tmp_path)
    assert done.returncode == 2 and "broken.png: not a readable image" in done.stderr


def test_checkpoint_problems_are_named(digits_ckpt: Path, tmp_path: Path):
    done = run_zoo("predict", "--ckpt_path", str(tmp_path / "nope.ckpt"), str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr
    old = torch.load(digits_ckpt, weights_only=True)
    del old["zoo_config"]  # as written before checkpoints carried their config
    torch.save(old, tmp_path / "old.ckpt")
    done = run_zoo("predict", "--ckpt_path", str(tmp_path / "old.ckpt"), str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "has no resolved config" in done.stderr


def test_texts_are_classified_with_the_training_vocabulary(workdir: Path):
    from tests.test_datamodules_text import ROWS, write

    train = write(workdir / "train.csv", ROWS)
    done = run_zoo(
        "fit",
        "--data=TextClassification",
        f"--data.train_file={train}",
        "--model=Classifier",
        "--model.backbone=lstm",
        *TINY,
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = next(workdir.glob("runs/**/last.ckpt"))
    new = workdir / "new.jsonl"
    new.write_text('{"text": "the cat purrs"}\n{"text": "never seen words only"}\n{"text": ""}\n')
    train_moved = workdir / "train.csv"
    train_moved.rename(workdir / "elsewhere.csv")  # the vocabulary comes from the checkpoint, not the file
    out = workdir / "texts.csv"
    done = run_zoo("predict", "--ckpt_path", str(ckpt), str(new), "--output", str(out), cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(out)
    assert [r["input"] for r in rows] == ["1", "2", "3"] and set(rows[0]) >= {"p_0", "p_1"}


def test_time_series_are_classified(workdir: Path):
    from datamodules.sequences import aeon_ts_files

    done = run_zoo("fit", "--config", "configs/experiments/japanesevowels_fcn.yaml", *TINY, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = next(workdir.glob("runs/**/last.ckpt"))
    out = workdir / "ts.csv"
    done = run_zoo(
        "predict", "--ckpt_path", str(ckpt), aeon_ts_files("JapaneseVowels")[1], "--output", str(out), cwd=workdir
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(out)
    assert len(rows) == 370 and rows[0]["predicted"] in {str(k) for k in range(1, 10)}
