"""`zoo tune`: search spaces checked before any trial, samplers, pruning, resuming, a study shared by two
processes, and a best config that `zoo fit` runs as is. Tiny digits MLP trials of about a second."""

from __future__ import annotations

import csv
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cli import main
from tests.conftest import ROOT, TINY, run_zoo
from zoo.commands import tune as tune_module

MLP = "configs/experiments/digits_mlp.yaml"


def tune(*args: str, study: str = "s") -> None:
    main(["tune", "--config", MLP, "--study", study, *TINY, *args])  # a test's own overrides win


def load(study: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///runs/tune/{study}.db")


def write_space(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def epoch_rows(run_dir: Path, column: str) -> list[float]:
    """The values of one column of a trial's metrics.csv, on the rows that have it."""
    with open(run_dir / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_values_stay_in_the_space_reach_the_config_and_best_yaml_runs(workdir: Path, capsys) -> None:
    tune(
        "--search",
        "configs/search/digits_mlp.yaml",
        "--sampler",
        "random",
        "--seed",
        "3",
        "--trials",
        "3",
        "--metric",
        "val/acc",
    )
    out = capsys.readouterr().out
    space = yaml.safe_load((ROOT / "configs/search/digits_mlp.yaml").read_text())
    study = load()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.direction.name == "MAXIMIZE"  # from the metric's name
    lr_spec = space["model.init_args.optimizer.init_args.lr"]
    sizes = space["model.init_args.backbone_kwargs.hidden_sizes"]["choices"]
    for t in study.trials:
        lr = t.params["model.init_args.optimizer.init_args.lr"]
        assert lr_spec["low"] <= lr <= lr_spec["high"]
        assert 16 <= t.params["data.init_args.batch_size"] <= 128
        dropout = t.params["model.init_args.backbone_kwargs.dropout"]
        assert 0.0 <= dropout <= 0.5 and math.isclose(dropout * 10, round(dropout * 10))  # step 0.1
        # What the trial really ran with: the config Lightning saved beside its logs.
        ran = yaml.safe_load((workdir / f"runs/tune/s/trial_{t.number}/config.yaml").read_text())
        assert ran["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(lr)
        assert ran["model"]["init_args"]["backbone_kwargs"]["hidden_sizes"] in sizes
        assert ran["data"]["init_args"]["batch_size"] == t.params["data.init_args.batch_size"]
        assert max(epoch_rows(workdir / f"runs/tune/s/trial_{t.number}", "val/acc")) == pytest.approx(t.value)
    assert out.index(f"│ {study.best_trial.number:5d} │") < min(
        out.index(f"│ {t.number:5d} │") for t in study.trials if t.number != study.best_trial.number
    )  # the table lists the best trial first

    best = yaml.safe_load((workdir / "runs/tune/s/best.json").read_text())
    assert best["value"] == pytest.approx(study.best_value) and best["trial"] == study.best_trial.number
    assert best["params"]["model.init_args.backbone_kwargs.hidden_sizes"] in sizes  # a list again, not JSON text
    done = run_zoo("fit", "--config", "runs/tune/s/best.yaml", *TINY, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (workdir / "runs/digits_mlp").iterdir()  # the original config's logger, not the trial's
    assert (run / "test_metrics.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert saved["optimizer"]["init_args"]["lr"] == pytest.approx(
        best["params"]["model.init_args.optimizer.init_args.lr"]
    )


def test_grid_covers_every_point_once_and_searches_finetuning(workdir: Path) -> None:
    space = write_space(
        workdir / "space.yaml",
        (
            "finetuning.strategy: {type: categorical, choices: [full, feature_extraction]}\n"
            "model.init_args.head_dropout: {type: float, low: 0.0, high: 0.5, step: 0.5}\n"
        ),
    )
    tune("--search", space, "--sampler", "grid", "--seed", "0")  # no --trials: the grid's 4 points
    tune("--search", space, "--sampler", "grid", "--trials", "9")  # exhausted: runs nothing more
    trials = load().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    points = sorted((t.params["finetuning.strategy"], t.params["model.init_args.head_dropout"]) for t in trials)
    assert points == sorted(itertools.product(["full", "feature_extraction"], [0.0, 0.5]))
    for t in trials:  # the FineTuning callback really ran each trial's strategy
        trainable = epoch_rows(workdir / f"runs/tune/s/trial_{t.number}", "finetune/trainable_groups")
        assert (trainable[0] == 0) == (t.params["finetuning.strategy"] == "feature_extraction")


def test_median_pruner_stops_a_diverging_trial(workdir: Path) -> None:
    space = write_space(workdir / "space.yaml", "model.init_args.head_dropout: {type: float, low: 0.0, high: 0.1}\n")
    common = ["--search", space, "--pruner", "median", "--startup_trials", "1", "--seed", "0"]
    tune(*common, "--trials", "1", "--model.init_args.optimizer.init_args.lr=0.001", "--trainer.max_epochs=3")
    # The same study, now with a learning rate that blows the loss up: worse than the median at epoch 0.
    tune(*common, "--trials", "2", "--model.init_args.optimizer.init_args.lr=10000", "--trainer.max_epochs=3")
    good, bad = load().trials
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 3
    assert bad.state == TrialState.PRUNED and list(bad.intermediate_values) == [0]
    assert len(epoch_rows(workdir / "runs/tune/s/trial_1", "val/loss")) == 1  # training stopped there


def test_invalid_trial_fails_with_its_message_and_the_study_goes_on(workdir: Path, capsys) -> None:
    space = write_space(
        workdir / "space.yaml",
        ("model.init_args.backbone_kwargs.activation: {type: categorical, choices: [relu, no_such_activation]}\n"),
    )
    tune("--search", space, "--sampler", "grid", "--seed", "0", "--pruner", "none")
    by_choice = {t.params["model.init_args.backbone_kwargs.activation"]: t for t in load().trials}
    assert by_choice["relu"].state == TrialState.COMPLETE
    failed = by_choice["no_such_activation"]
    assert failed.state == TrialState.FAIL and "no_such_activation" in failed.user_attrs["error"]
    assert f"trial {failed.number} FAIL" in capsys.readouterr().out


def test_interrupted_study_resumes_to_the_requested_trials(workdir: Path, monkeypatch, capsys) -> None:
    space = write_space(workdir / "space.yaml", "model.init_args.head_dropout: {type: float, low: 0.0, high: 0.5}\n")
    report = tune_module._Reporter.on_validation_end

    def ctrl_c_in_trial_2(self, trainer, pl_module) -> None:
        if self.trial.number == 2:
            raise KeyboardInterrupt  # as if Ctrl-C were pressed while trial 2 trains
        report(self, trainer, pl_module)

    monkeypatch.setattr(tune_module._Reporter, "on_validation_end", ctrl_c_in_trial_2)
    with pytest.raises(SystemExit) as stopped:
        tune("--search", space, "--trials", "4", "--seed", "0")
    assert stopped.value.code == 130 and "run the same command again" in capsys.readouterr().err
    assert [t.state for t in load().trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    monkeypatch.setattr(tune_module._Reporter, "on_validation_end", report)  # not undo(): it would leave workdir

    tune("--search", space, "--trials", "4", "--seed", "0")
    assert "2 of 4 trials done" in capsys.readouterr().out
    trials = load().trials
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [0, 1, 3, 4]
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["interrupted"]
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params  # its values tried again


def test_interrupted_grid_point_is_still_covered(workdir: Path, monkeypatch) -> None:
    space = write_space(
        workdir / "space.yaml", "model.init_args.head_dropout: {type: categorical, choices: [0.0, 0.1, 0.2]}\n"
    )
    report = tune_module._Reporter.on_validation_end

    def ctrl_c_in_trial_1(self, trainer, pl_module) -> None:
        if self.trial.number == 1:
            raise KeyboardInterrupt
        report(self, trainer, pl_module)

    monkeypatch.setattr(tune_module._Reporter, "on_validation_end", ctrl_c_in_trial_1)
    with pytest.raises(SystemExit):
        tune("--search", space, "--sampler", "grid", "--seed", "0")
    monkeypatch.setattr(tune_module._Reporter, "on_validation_end", report)
    tune("--search", space, "--sampler", "grid", "--seed", "0")
    done = [t.params["model.init_args.head_dropout"] for t in load().trials if t.state == TrialState.COMPLETE]
    assert sorted(done) == [0.0, 0.1, 0.2]  # each point once, the interrupted one included


@pytest.mark.slow  # end to end (a whole run and its processes): the second tier
def test_two_processes_share_one_sqlite_study(workdir: Path) -> None:
    space = write_space(workdir / "space.yaml", "model.init_args.head_dropout: {type: float, low: 0.0, high: 0.5}\n")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "tune",
                "--config",
                MLP,
                "--search",
                space,
                "--study",
                "shared",
                "--storage",
                f"sqlite:///{workdir}/shared.db",
                "--trials",
                "4",
                "--sampler",
                "random",
                "--seed",
                str(seed),
                *TINY,
            ],
            cwd=workdir,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "best: trial" in out
    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{workdir}/shared.db").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # exactly --trials in all, none twice
    assert all(t.state == TrialState.COMPLETE for t in trials)
    print("trials per worker:", sorted(t.user_attrs["worker"] for t in trials))


@pytest.mark.parametrize(
    ("space", "sampler", "expected"),
    [
        (
            "finetuning.strateg: {type: categorical, choices: [full]}\n",
            "tpe",
            ["'finetuning.strateg' is not a key of the config", "did you mean finetuning.strategy"],
        ),
        (
            "model.init_args.optimizer.init_args.lrr: {type: float, low: 1.0e-4, high: 0.1, log: true}\n",
            "tpe",
            ["'model.init_args.optimizer.init_args.lrr'", "model.init_args.optimizer.init_args.lr"],
        ),
        (
            "model.init_args.head_dropout: {type: float, low: 0.5, high: 0.1}\n",
            "tpe",
            ["model.init_args.head_dropout: low (0.5) must not be above high (0.1)"],
        ),
        (
            "model.init_args.head_dropout: {type: float, low: 0.0, high: 0.5}\n",
            "grid",
            ["model.init_args.head_dropout: --sampler grid needs a grid", "add step:"],
        ),
    ],
    ids=["finetuning-key-typo", "optimizer-key-typo", "low-above-high", "grid-without-step"],
)
def test_bad_search_space_exits_2_before_any_trial(
    workdir: Path, capsys, space: str, sampler: str, expected: list[str]
) -> None:
    path = write_space(workdir / "space.yaml", space)
    with pytest.raises(SystemExit) as stopped:
        tune("--search", path, "--sampler", sampler)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"zoo: error: {path}: " in err
    for text in expected:
        assert text in err
    assert not (workdir / "runs/tune/s").exists()  # no trial ran
