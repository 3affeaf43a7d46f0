"""The step budget and the model selection decided from the data's size (zoo.budget), and MiniRocket."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_zoo
from zoo.budget import MIN_STEPS, MIN_VAL_SAMPLES, plan
from zoo.errors import ConfigError


# --- plan(): pure decisions ------------------------------------------------------------------------
def test_small_validation_joins_training_and_keeps_the_last_weights():
    decided = plan(train_size=32, val_size=4, batch_size=32, steps=None)
    assert decided.selection == "last"
    assert decided.batch_size == 9  # 36 samples: capped so an epoch has 4 steps
    assert any("4 samples" in note and "last weights" in note for note in decided.notes)


def test_enough_validation_selects_the_best_checkpoint_quietly():
    decided = plan(train_size=1000, val_size=MIN_VAL_SAMPLES, batch_size=32, steps=None, max_epochs=10)
    assert decided.selection == "best" and decided.batch_size == 32 and not decided.notes


def test_forced_best_on_a_tiny_validation_split_is_warned_about():
    decided = plan(train_size=100, val_size=10, batch_size=8, steps=None, selection="best")
    assert decided.selection == "best"
    assert any("10 validation samples" in note for note in decided.notes)


def test_steps_set_the_epochs_from_the_data_size():
    decided = plan(train_size=90, val_size=10, batch_size=16, steps=1000)
    # last: 100 samples in batches of 16 = 7 steps an epoch -> 143 epochs, capped by max_steps=1000
    assert (decided.steps, decided.epochs, decided.selection) == (1000, 143, "last")


def test_auto_steps_are_ten_epochs_within_bounds():
    assert plan(50, 0, 16, "auto").steps == 1000  # 10 epochs of 4 steps is below the floor
    assert plan(100_000, 5000, 50, "auto").steps == 10_000  # 10 epochs of 2,100 steps is above the ceiling
    assert plan(8000, 2000, 50, "auto").steps == 1600  # between: 10 epochs of 160 (train only, best)


def test_processes_and_accumulation_count_in_the_steps_per_epoch():
    decided = plan(train_size=400, val_size=100, batch_size=10, steps=100, processes=2, accumulate=5)
    assert decided.epochs == 25  # 200 samples per process / 10 = 20 batches / 5 = 4 steps an epoch


def test_too_few_steps_are_named_before_training():
    decided = plan(train_size=32, val_size=4, batch_size=32, steps=None, max_epochs=20)
    few = [note for note in decided.notes if "few to train" in note]
    assert (
        few and "only 80 optimizer steps" in few[0] and f"under {MIN_STEPS}" in few[0]
    )  # 36 samples / 9 = 4 steps x 20 epochs


def test_a_non_positive_step_budget_is_refused():
    with pytest.raises(ConfigError, match="--steps=0"):
        plan(100, 0, 10, 0)


# --- through `zoo fit` -----------------------------------------------------------------------------
SERIES = [
    "fit",
    "--config",
    "configs/recipes/series_classification.yaml",
    "--data.name",
    "ArrowHead",
    "--model.backbone_kwargs",
    '{"num_features": 840}',
    "--trainer.enable_progress_bar=false",
    "--data.val_split=0.1",
    "--selection=auto",  # the recipe trains on everything; auto decides the same here
    "--trainer.enable_model_summary=false",
    "--pictures=false",
    "--baseline=false",
]


def test_series_recipe_on_small_data_trains_on_all_of_it_for_its_steps(workdir):
    result = run_zoo(*SERIES, "--steps", "40", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation split of 4 samples" in result.stderr and "last weights" in result.stderr
    assert "40 optimizer steps = 10 epochs" in result.stderr
    assert "under 100" in result.stderr  # 40 steps are named as few
    run = workdir / "runs" / "series_classification" / "version_0"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "best-epoch=9-step=40.ckpt" in names  # the last weights, after exactly the budget
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["test/acc"] > 0.6  # 3 classes; MiniRocket features learn ArrowHead within 40 steps
    assert not any(key.startswith("val/") for key in metrics)


# --- MiniRocket against the reference implementation ------------------------------------------------
def test_minirocket_features_match_aeons_given_the_same_biases():
    aeon = pytest.importorskip("aeon.transformations.collection.convolution_based")
    from aeon.datasets import load_classification

    from zoo.backbones.rocket import MiniRocketBackbone

    x_train, _ = load_classification("GunPoint", split="train")
    x_test, _ = load_classification("GunPoint", split="test")
    reference = aeon.MiniRocket(random_state=0).fit(x_train)
    ours = MiniRocketBackbone(input_shape=(x_train.shape[-1], 1))
    assert ours.dilations == reference.parameters[2].tolist()
    assert ours.per_dilation == reference.parameters[3].tolist()
    ours.biases.copy_(torch.from_numpy(reference.parameters[4]))
    series = torch.tensor(x_test[:20], dtype=torch.float32).transpose(1, 2)  # (B, T, 1)
    got = ours._ppv(*ours._inputs(series, None)).numpy()
    want = np.asarray(reference.transform(x_test[:20]))
    # PPVs are proportions of steps: a float32 rounding difference at a bias flips one step of 150 (0.0067)
    assert np.abs(got - want).max() <= 2 / 150 + 1e-6
    assert np.abs(got - want).mean() < 1e-3


def test_minirocket_caches_a_series_features_and_forgets_them_with_new_biases():
    from zoo.backbones.rocket import MiniRocketBackbone

    backbone = MiniRocketBackbone(input_shape=(60, 2), num_features=168)
    x, mask = torch.randn(6, 60, 2), torch.ones(6, 60, dtype=torch.bool)
    mask[0, 30:] = False
    backbone.fit_to_data([{"x": x, "mask": mask}])
    first = backbone(x, mask)
    assert len(backbone._cache) == 6
    assert torch.equal(backbone(x[[1, 0]], mask[[1, 0]]), first[[1, 0]])  # read back, whatever the batch
    padded = torch.cat([x[:1], torch.zeros(1, 60, 2)]).clone()
    assert torch.allclose(backbone(padded[:1], mask[:1]), first[:1])  # padding is not part of a series
    backbone.load_state_dict(backbone.state_dict())
    assert not backbone._cache


def test_series_model_refuses_new_series_of_other_dimensions_and_an_unfitted_test(workdir):
    import aeon

    shipped = Path(aeon.__file__).parent / "datasets" / "data"
    fit = run_zoo(*SERIES[:4], "BasicMotions", *SERIES[5:], "--steps", "8", cwd=workdir)  # 6 channels
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = workdir / "runs" / "series_classification" / "version_0" / "checkpoints" / "last.ckpt"
    other = run_zoo("predict", "--ckpt_path", str(ckpt), str(shipped / "GunPoint" / "GunPoint_TEST.ts"), cwd=workdir)
    assert other.returncode == 2 and "its series have 1 dimensions; the model was trained on 6" in other.stderr
    unfitted = run_zoo("test", *SERIES[1:4], "BasicMotions", "--baseline=false", cwd=workdir)
    assert unfitted.returncode == 2
    assert "backbone 'minirocket' is fitted to the training data when training starts" in unfitted.stderr
    assert "Traceback" not in unfitted.stderr


def test_tree_baseline_survives_empty_and_many_level_columns():
    from datamodules.base import BaselineData
    from zoo.baselines import comparison, run_baselines

    rng = np.random.default_rng(0)
    n = 400
    city = rng.integers(0, 300, n).astype(float)  # 300 levels: beyond the trees' 255 categories
    signal = rng.normal(size=n)
    x = np.column_stack([signal, np.full(n, np.nan), city])  # the middle column is always missing
    y = (signal > 0).astype(int)
    data = BaselineData("table", x[:300], y[:300], x[300:], y[300:], categorical=[2])
    results = run_baselines(data, "classification")
    assert (
        results["baseline/hist_gradient_boosting/acc"] > 0.9 and "baseline/hist_gradient_boosting/failed" not in results
    )
    said = comparison({"test/acc": 0.5}, {**results, "baseline/minirocket/failed": 1.0}, "classification")
    assert "minirocket failed (see above): the comparison is with the others only" in said


RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_states_a_budget_and_how_to_run_it(recipe):
    """(That each resolves is tests/test_configs.py's.)"""
    import yaml

    text = recipe.read_text()
    config = yaml.safe_load(text)
    assert "zoo fit --config configs/recipes/" in text  # the header says how to run it on one's own data
    assert config.get("steps") is not None or config["trainer"].get("max_epochs"), "a recipe states its budget"


def test_a_trainer_max_epochs_given_with_steps_stays_a_limit():
    decided = plan(train_size=90, val_size=10, batch_size=16, steps=1000, max_epochs=3)
    assert (decided.steps, decided.epochs) == (21, 3)  # 3 epochs of 7 steps
    assert any("capped by trainer.max_epochs" in note for note in decided.notes)
