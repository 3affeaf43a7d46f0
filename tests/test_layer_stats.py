"""zoo.callbacks.layer_stats: layer_stats.csv as `zoo diagnose` and the heat maps read it: its exact columns,
forward order, the cells that apply to each kind of layer, dead and saturated units measured, and a resume that
writes no step twice."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.callbacks.layer_stats import LayerStats, activation_family, forward_order
from zoo.diagnosis.record import LAYER_STATS_COLUMNS, LAYER_STATS_FILE
from zoo.tasks import Classifier


def test_the_columns_are_the_agreed_ones():
    assert ",".join(LAYER_STATS_COLUMNS) == (
        "step,epoch,layer,kind,grad_norm,update_ratio,act_mean,act_std,dead_fraction,saturated_fraction"
    )


@pytest.mark.parametrize(
    ("module", "family"),
    [
        (nn.ReLU(), "rectifier"),
        (nn.LeakyReLU(), "rectifier"),
        (nn.GELU(), "rectifier"),
        (nn.SiLU(), "rectifier"),
        (nn.ReLU6(), "rectifier"),
        (nn.Sigmoid(), "sigmoid"),
        (nn.Hardsigmoid(), "sigmoid"),
        (nn.Tanh(), "tanh"),
        (nn.Hardtanh(), "tanh"),
        (nn.LogSigmoid(), None),
        (nn.PixelUnshuffle(2), None),  # "elu" inside its name
        (nn.Linear(2, 2), None),
        (nn.Sequential(nn.ReLU()), None),  # a container is not an activation
    ],
)
def test_activations_are_told_by_class_name(module, family):
    assert activation_family(module) == family


def test_a_layer_never_called_follows_the_one_before_it():
    # 0: attention (called), 1: its output projection (weights used by its parent, never called), 2: the head.
    assert forward_order([0, 2], 3) == [0, 1, 2]
    assert forward_order([2, 1], 3) == [0, 2, 1]  # a layer before every called one comes first


def fit(
    root: Path, steps: int, bias: float = 0.0, activation: str = "relu", ckpt: str | None = None, before: tuple = ()
) -> Path:
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    kwargs = {"hidden_sizes": (16, 8), "activation": activation, "bias_init": bias, "norm": "none"}
    task = Classifier(backbone="mlp", backbone_kwargs=kwargs, num_classes=3, input_shape=(8,))
    trainer = Trainer(
        max_steps=steps,
        log_every_n_steps=1,
        logger=CSVLogger(root, name="run", version="v"),
        callbacks=[*before, LayerStats(max_samples=32)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(task, data, data, ckpt_path=ckpt, weights_only=False)  # our own file: hparams hold the optimizer
    return root / "run" / "v"


def rows_of(run: Path) -> list[dict[str, str]]:
    with open(run / LAYER_STATS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == LAYER_STATS_COLUMNS
        return list(reader)


def test_each_logging_step_has_every_layer_in_forward_order_with_the_cells_that_apply(tmp_path: Path):
    rows = rows_of(fit(tmp_path, steps=3))
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2]
    first = [r for r in rows if r["step"] == "0"]
    assert [(r["layer"], r["kind"]) for r in first] == [
        ("backbone.blocks.0.0", "param"),
        ("backbone.blocks.0.1", "activation"),
        ("backbone.blocks.1.0", "param"),
        ("backbone.blocks.1.1", "activation"),
        ("head.fc", "param"),
    ]
    for row in first:
        if row["kind"] == "param":
            assert float(row["grad_norm"]) > 0 and 0 < float(row["update_ratio"]) < 1
            assert row["dead_fraction"] == row["saturated_fraction"] == ""
        else:  # a ReLU: no weights, units that can die, nothing to saturate
            assert row["grad_norm"] == row["update_ratio"] == row["saturated_fraction"] == ""
            assert 0 <= float(row["dead_fraction"]) < 0.5
        assert float(row["act_std"]) > 0


def test_dead_and_saturated_units_are_measured(tmp_path: Path):
    dead = rows_of(fit(tmp_path / "dead", steps=1, bias=-100.0))  # no input reaches 100: every ReLU unit is off
    assert {r["dead_fraction"] for r in dead if r["kind"] == "activation"} == {"1"}
    saturated = rows_of(fit(tmp_path / "sigmoid", steps=1, bias=50.0, activation="sigmoid"))
    assert {r["saturated_fraction"] for r in saturated if r["kind"] == "activation"} == {"1"}


def test_a_resumed_fit_carries_the_steps_before_its_checkpoint_and_writes_none_twice(tmp_path: Path):
    first = fit(tmp_path / "a", steps=4)  # one epoch of 4 batches: last.ckpt at step 4
    ckpt = next((first / "checkpoints").glob("*.ckpt"))
    with open(first / LAYER_STATS_FILE, "a") as f:  # as if killed after the checkpoint, mid-way through step 4
        f.write("4,1,backbone.blocks.0.0,param,1,1,1,1,,\n")
    resumed = fit(tmp_path / "b", steps=6, ckpt=str(ckpt))
    steps = [int(r["step"]) for r in rows_of(resumed) if r["layer"] == "head.fc"]
    assert steps == [0, 1, 2, 3, 4, 5]


class DropGradients(Callback):
    """Steps without gradients, as StochasticWeightAveraging's batch-norm epoch does."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: object) -> None:
        for p in pl_module.parameters():
            p.grad = None


def test_a_step_without_gradients_leaves_their_cells_empty(tmp_path: Path):
    rows = rows_of(fit(tmp_path, steps=2, before=(DropGradients(),)))
    params = [r for r in rows if r["kind"] == "param"]
    assert params and all(r["grad_norm"] == "" and float(r["update_ratio"]) == 0 for r in params)


def test_recording_leaves_the_training_as_it_was(tmp_path: Path):
    """Weights equal to the bit with and without the callback: its pass in eval mode changes no batch-norm
    statistics, and the validation batch it draws takes no number from the run's random generator (shuffling,
    dropout)."""
    from lightning.pytorch import LightningDataModule, seed_everything

    def train(callbacks: list, folder: str) -> dict[str, torch.Tensor]:
        seed_everything(0)
        data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
        datamodule = LightningDataModule.from_datasets(data, data, batch_size=16)
        kwargs = {"hidden_sizes": (16,), "dropout": 0.5, "norm": "batch"}
        task = Classifier(backbone="mlp", backbone_kwargs=kwargs, num_classes=3, input_shape=(8,))
        trainer = Trainer(
            max_steps=8,
            log_every_n_steps=1,
            logger=CSVLogger(tmp_path / folder),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
        )
        trainer.fit(task, datamodule=datamodule)
        return task.state_dict()

    plain, recorded = train([], "plain"), train([LayerStats()], "recorded")
    assert all(torch.equal(plain[k], recorded[k]) for k in plain)
