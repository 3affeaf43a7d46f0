"""`zoo lr-find`: the sweep covers the LR range, the plot and the JSON show it, the written config trains with
the suggested LR, discriminative rates keep their ratios, and bad input is a clear error. Sweeps of 30 steps
on the digits MLP, a few seconds each."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cli
from tests.conftest import ROOT, TINY

MLP = "configs/experiments/digits_mlp.yaml"
OUT = Path("runs/lr_find/digits_mlp")
FAST = ["--trainer.max_epochs=1", "--num_training", "30"]


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that notes the LR of each named group at every step: what the sweep really trains with."""

    steps: list[dict[str, float]] = []

    def step(self, closure: Any = None) -> Any:
        RecordingAdamW.steps.append({group["name"]: group["lr"] for group in self.param_groups})
        return super().step(closure)


class FixedSGD(torch.optim.SGD):
    """An optimizer whose LR is no setting of the config."""

    def __init__(self, params: Any, momentum: float = 0.0) -> None:
        super().__init__(params, lr=0.01, momentum=momentum)


@pytest.fixture(autouse=True)
def _lr_find_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMAND_MODULES, "lr-find", "zoo.commands.lr_find")  # however cli.py lists it


def lr_find(*args: str, config: str = MLP) -> None:
    cli.main(["lr-find", "--config", config, *FAST, *args])


def error_of(capsys: pytest.CaptureFixture, *args: str, config: str = MLP) -> str:
    """Run `zoo lr-find` expecting a usage error: exit code 2; returns what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        lr_find(*args, config=config)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def with_optimizer(workdir: Path, class_path: str, init_args: dict[str, Any]) -> str:
    """The digits MLP config with another optimizer, written into the working directory."""
    config = yaml.safe_load((ROOT / MLP).read_text())
    config["model"]["init_args"]["optimizer"] = {"class_path": class_path, "init_args": init_args}
    path = workdir / f"{class_path.rsplit('.', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def assert_picture(path: Path) -> None:
    """A real PNG with a plot drawn on it: dark lines and a coloured curve on a light page."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert 600 <= width <= 2000 and 400 <= height <= 1500, (width, height)
    gray = pixels.mean(axis=2)
    assert gray.std() > 10 and 0.005 < (gray < 128).mean() < 0.5
    assert (pixels.max(axis=2) - pixels.min(axis=2) > 80).mean() > 0.002  # the curve and the red mark


def test_sweep_spans_the_range_and_its_config_trains_with_the_suggestion(workdir: Path, capsys) -> None:
    lr_find("--min_lr", "1e-6", "--max_lr", "0.5")
    out = capsys.readouterr().out
    result = json.loads((workdir / OUT / "lr_find.json").read_text())
    lrs, suggestion = result["lrs"], result["suggestion"]
    assert len(lrs) == len(result["losses"]) == len(result["raw_losses"]) == 30 and not result["stopped_early"]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(0.5)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    ratios = [b / a for a, b in zip(lrs[1:], lrs[2:])]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential: one factor per step
    assert 1e-6 < suggestion < 0.5 and suggestion in lrs
    losses = result["losses"]
    at = lrs.index(suggestion)
    assert losses[at] < losses[0] and at < losses.index(min(losses))  # on the way down, before the lowest loss
    assert_picture(workdir / OUT / "lr_find.png")
    assert f"suggested learning rate: {suggestion:.3g}" in out
    assert f"zoo fit --config {OUT / 'lr_find.yaml'}" in out

    written = yaml.safe_load((workdir / OUT / "lr_find.yaml").read_text())
    assert written["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(suggestion)
    assert written["data"]["init_args"]["batch_size"] == 64  # the config's own: no batch size finder
    assert written["trainer"]["max_epochs"] == 1  # the command line's overrides, not the sweep's settings
    assert written["trainer"]["logger"]["init_args"]["name"] == "digits_mlp"
    cli.main(["fit", "--config", str(OUT / "lr_find.yaml"), *TINY])
    (run,) = (workdir / "runs/digits_mlp").iterdir()
    assert (run / "test_metrics.json").is_file()
    ran = yaml.safe_load((run / "config.yaml").read_text())
    assert ran["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(suggestion)


def test_batch_size_finder_writes_a_power_of_two_under_the_cap(workdir: Path, capsys) -> None:
    lr_find("--batch_size_finder", "--max_batch_size", "100")
    out = capsys.readouterr().out
    result = json.loads((workdir / OUT / "lr_find.json").read_text())
    found = result["batch_size"]
    assert result["batch_size_found"] and found <= 100 and found & (found - 1) == 0
    assert found == 64  # on a CPU nothing runs out of memory: the cap, rounded down to a power of two
    assert "stops at 64" in out and "batch size finder: 64" in out
    written = yaml.safe_load((workdir / OUT / "lr_find.yaml").read_text())
    assert written["data"]["init_args"]["batch_size"] == found
    assert written["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(result["suggestion"])


def test_the_tuners_temporary_checkpoints_leave_no_weights_only_notice(workdir: Path) -> None:
    messages = io.StringIO()
    handler = logging.StreamHandler(messages)  # on Lightning's own logger: it may not pass messages to the root
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        lr_find("--batch_size_finder", "--max_batch_size", "4")
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    said = messages.getvalue()
    assert said.count("Restored all states from the checkpoint") == 2  # both tuners saved and restored one
    assert "weights_only" not in said


def test_discriminative_rates_keep_their_ratios_and_frozen_groups_stay_still(workdir: Path) -> None:
    config = with_optimizer(workdir, "tests.test_lr_find.RecordingAdamW", {"lr": 0.001, "weight_decay": 0.0})
    RecordingAdamW.steps.clear()
    # block1 (top) trains from epoch 0 at 0.2 x the head's LR; block0 stays frozen in epoch 0.
    lr_find(
        "--finetuning.strategy=milestones",
        "--finetuning.milestones={0: 1, 3: -1}",
        "--finetuning.backbone_lr_ratio=0.2",
        "--output",
        "sweep",
        config=config,
    )
    result = json.loads((workdir / "sweep/lr_find.json").read_text())
    steps = RecordingAdamW.steps
    assert len(steps) == 30
    assert [s["head"] for s in steps] == pytest.approx(result["lrs"])  # the head sweeps the recorded LRs
    for s in steps:
        assert s["backbone.block1"] == pytest.approx(0.2 * s["head"]) == s["backbone.block1.no_decay"]
        assert s["backbone.block0"] == s["backbone.block0.no_decay"] == 0.0
    assert result["lr_multipliers"]["backbone.block1"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min_lr", "0.1", "--max_lr", "0.01"], "--min_lr (0.1) must be above 0 and below --max_lr (0.01)"),
        (["--min_lr", "0.1", "--max_lr", "0.1"], "--min_lr (0.1) must be above 0 and below --max_lr (0.1)"),
        (["--num_training", "5"], "--num_training 5 is too few steps"),
        (["--num_trainig", "50"], "did you mean --num_training"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(workdir: Path, capsys, args: list[str], message: str) -> None:
    assert message in error_of(capsys, *args)
    assert not (workdir / "runs").exists()


def test_an_optimizer_without_lr_is_refused(workdir: Path, capsys) -> None:
    config = with_optimizer(workdir, "tests.test_lr_find.FixedSGD", {"momentum": 0.9})
    err = error_of(capsys, config=config)
    assert "zoo: error:" in err and "the optimizer (tests.test_lr_find.FixedSGD) has no lr" in err


def test_a_diverged_sweep_says_so_and_still_draws_the_plot(workdir: Path, capsys) -> None:
    err = error_of(capsys, "--min_lr", "100", "--max_lr", "10000")
    assert "no suggestion: the loss diverged after" in err and "start lower" in err
    result = json.loads((workdir / OUT / "lr_find.json").read_text())
    assert result["suggestion"] is None and result["stopped_early"] and len(result["lrs"]) < 30
    assert math.isclose(result["lrs"][0], 100.0)
    assert_picture(workdir / OUT / "lr_find.png")
    assert not (workdir / OUT / "lr_find.yaml").exists()
