"""`zoo report RUN_DIR RUN_DIR ...`: runs' curves in one figure, one table of their metrics and of exactly the
settings that differ, short names that tell the runs apart, and the errors a user meets. Run folders are written
here by hand (a real pair is in tests/test_report.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from cli import main as zoo_main
from zoo.commands.report import main as report
from zoo.commands.report import read_history
from zoo.compare import MISSING, differing_settings, flatten, read_run, run_names
from zoo.errors import ZooError

CONFIG = {
    "seed_everything": 0,
    "trainer": {"max_epochs": 3, "callbacks": [{"class_path": "a.B", "init_args": {"k": 1}}]},
    "model": {"class_path": "zoo.tasks.Classifier", "init_args": {"backbone": "cnn", "optimizer": {"lr": 0.01}}},
    "data": {"batch_size": 32, "augment": None},
}


def _run(folder: Path, val_losses: list[float], config: dict, test_acc: float) -> Path:
    """A run folder as `zoo fit` leaves it: metrics.csv with training and validation epochs, config, test metrics."""
    folder.mkdir(parents=True)
    rows = [["epoch", "step", "train/loss_epoch", "val/loss", "val/acc"]]
    for epoch, loss in enumerate(val_losses):
        rows.append([epoch, 10 * epoch + 9, "", loss, 1 - loss / 4])
        rows.append([epoch, 10 * epoch + 9, loss + 0.1, "", ""])
    with open(folder / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "test_metrics.json").write_text(json.dumps({"test/acc": test_acc, "baseline/majority/acc": 0.1}))
    return folder


def _variant(**changes: object) -> dict:
    config = json.loads(json.dumps(CONFIG))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = config
        for key in path:
            node = node[key]
        node[last] = value
    return config


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    return [
        _run(tmp_path / "runs" / "cnn" / "version_0", [1.0, 0.5, 0.7], CONFIG, 0.81),
        _run(
            tmp_path / "runs" / "cnn_lr" / "version_0",
            [1.2, 0.9, 0.6, 0.4],
            _variant(model__init_args__optimizer__lr=0.001, trainer__max_epochs=4, data__augment="light"),
            0.9,
        ),
    ]


def test_run_names_keep_only_what_tells_runs_apart(tmp_path: Path) -> None:
    for folder in ("runs/a/version_0", "runs/b/version_0", "runs/a/version_1", "other/runs/a/version_0"):
        (tmp_path / folder).mkdir(parents=True)
    at = [str(tmp_path / f) for f in ("runs/a/version_0", "runs/b/version_0")]
    assert run_names(at) == ["a", "b"]
    at = [str(tmp_path / f) for f in ("runs/a/version_0", "runs/a/version_1")]
    assert run_names(at) == ["version_0", "version_1"]
    at = [str(tmp_path / f) for f in ("runs/a/version_0", "other/runs/a/version_0")]
    assert run_names(at) == ["runs", "other/runs"]
    with pytest.raises(ZooError, match="given twice"):
        run_names([str(tmp_path / "runs/a/version_0"), str(tmp_path / "runs/a/version_0/")])


def test_only_settings_that_differ_are_listed_and_unset_means_null() -> None:
    a = flatten(CONFIG)
    assert a["trainer.callbacks[0].init_args.k"] == 1 and a["model.init_args.optimizer.lr"] == 0.01
    b = flatten(_variant(model__init_args__optimizer__lr=0.001, seed_everything=None))
    c = flatten(_variant(trainer__callbacks=[]))
    del c["data.augment"]  # absent and null are the same setting: the default
    differ = differing_settings([a, b, c, None])
    assert differ == {
        "model.init_args.optimizer.lr": [0.01, 0.001, 0.01, MISSING],
        "seed_everything": [0, MISSING, 0, MISSING],
        "trainer.callbacks": [MISSING, MISSING, [], MISSING],
        "trainer.callbacks[0].class_path": ["a.B", "a.B", MISSING, MISSING],
        "trainer.callbacks[0].init_args.k": [1, 1, MISSING, MISSING],
    }


def test_the_table_has_each_runs_metrics_and_exactly_the_differing_settings(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report([*map(str, two_runs), "--output", str(tmp_path / "c")])
    printed = capsys.readouterr().out
    with open(tmp_path / "c" / "compare.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "kind", "cnn", "cnn_lr"] and rows[1] == ["folder", "run", *map(str, two_runs)]
    table = {row[0]: row[1:] for row in rows[2:]}
    settings = {name for name, (kind, *_) in table.items() if kind == "setting"}
    assert settings == {"model.init_args.optimizer.lr", "trainer.max_epochs", "data.augment"}
    assert table["model.init_args.optimizer.lr"] == ["setting", "0.01", "0.001"]
    assert table["data.augment"] == ["setting", MISSING, "light"]
    # The first run's best epoch is 1 (lowest val/loss), its last 2; the second's best is its last.
    assert table["best epoch"] == ["metric", "1", "3"] and table["epochs"] == ["metric", "3", "4"]
    assert table["val/loss (best epoch)"] == ["metric", "0.5", "0.4"]
    assert table["val/loss (last epoch)"] == ["metric", "0.7", "0.4"]
    assert table["val/acc (best epoch)"] == ["metric", "0.875", "0.9"]
    assert table["train/loss (last epoch)"] == ["metric", "0.8", "0.5"]
    assert table["test/acc"] == ["metric", "0.81", "0.9"] and "baseline/majority/acc" not in table
    markdown = (tmp_path / "c" / "compare.md").read_text()
    assert "|  | cnn | cnn_lr |" in markdown and "| `model.init_args.optimizer.lr` | 0.01 | 0.001 |" in markdown
    assert "settings that differ" in printed and "0.001" in printed
    assert str(tmp_path / "c" / "learning_curves.png") in printed


def test_the_figure_overlays_every_runs_curves_one_colour_each(two_runs: list[Path]) -> None:
    from zoo.compare import plot_compared_curves

    runs = [read_run(p, n, read_history(p)) for p, n in zip(two_runs, ["cnn", "cnn_lr"])]
    fig = plot_compared_curves(runs)
    loss_ax, acc_ax = fig.axes[:2]
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("loss", "acc")
    lines = [line for line in loss_ax.get_lines() if len(line.get_xdata()) > 1]
    styles = {(line.get_color(), line.get_linestyle()): list(line.get_ydata()) for line in lines}
    assert styles[("C0", "-")] == [1.0, 0.5, 0.7] and styles[("C1", "-")] == [1.2, 0.9, 0.6, 0.4]  # validation
    assert styles[("C1", "--")] == pytest.approx([1.3, 1.0, 0.7, 0.5])  # training, dashed
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert legend[:2] == ["cnn", "cnn_lr"] and "train" in legend and "validation" in legend
    circles = [line for line in loss_ax.get_lines() if line.get_marker() == "o"]  # each run's best epoch
    assert sorted((float(c.get_xdata()[0]), float(c.get_ydata()[0])) for c in circles) == [(1.0, 0.5), (3.0, 0.4)]


def test_a_bad_folder_among_the_runs_is_named_with_exit_code_2(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["report", str(two_runs[0]), str(tmp_path / "empty"), "--output", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and f"{tmp_path / 'empty'} has no metrics.csv" in err
    assert not (tmp_path / "c").exists()  # nothing written before every run is read
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(["report", *map(str, two_runs), "--plots", "learning_curves"])
    assert exit_info.value.code == 2 and "--plots draws the pictures of one run" in capsys.readouterr().err
