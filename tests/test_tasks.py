"""Tasks: the Classifier's and Regressor's losses, metrics, predictions and optimizer groups, and that a
Classifier learns a separable problem under a real Trainer."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from zoo.errors import ConfigError
from zoo.tasks import Classifier, Regressor

TINY_MLP = {"hidden_sizes": (8, 6)}


def make_classifier(**kwargs) -> Classifier:
    torch.manual_seed(0)
    return Classifier(
        **{"backbone": "mlp", "backbone_kwargs": TINY_MLP, "input_shape": (4,), "num_classes": 3, **kwargs}
    )


def make_regressor(**kwargs) -> Regressor:
    torch.manual_seed(0)
    return Regressor(
        **{"backbone": "mlp", "backbone_kwargs": TINY_MLP, "input_shape": (4,), "num_targets": 1, **kwargs}
    )


def tiny_trainer(max_epochs: int) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


# --- Classifier: construction -------------------------------------------------------------------------
def test_classifier_wires_backbone_to_head():
    model = make_classifier()
    assert (model.head.fc.in_features, model.head.fc.out_features) == (6, 3)
    assert model(torch.randn(5, 4)).shape == (5, 3)


def test_missing_input_shape_raises():
    with pytest.raises(ConfigError, match="model.input_shape is not set"):
        Classifier(num_classes=3)


@pytest.mark.parametrize("num_classes", [None, 1])
def test_too_few_classes_points_to_regressor(num_classes):
    with pytest.raises(ConfigError, match=rf"num_classes={num_classes}.*zoo.tasks.Regressor"):
        make_classifier(num_classes=num_classes)


def test_class_weights_of_wrong_length_raise():
    with pytest.raises(ConfigError, match="class_weights has 2 values but the data has 3 classes"):
        make_classifier(class_weights=[1.0, 2.0])


def test_label_smoothing_out_of_range_raises():
    with pytest.raises(ConfigError, match=r"label_smoothing=1.0 must be in \[0, 1\)"):
        make_classifier(label_smoothing=1.0)


# --- Classifier: loss, metrics, predictions -------------------------------------------------------------
def test_loss_applies_label_smoothing_and_class_weights():
    model = make_classifier(label_smoothing=0.1, class_weights=[1.0, 2.0, 0.5])
    logits, target = torch.randn(8, 3), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    torch.testing.assert_close(model.loss(logits, target), expected)
    assert not torch.allclose(expected, F.cross_entropy(logits, target))  # the options change the number


def test_loss_without_options_is_plain_cross_entropy():
    model = make_classifier()
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    torch.testing.assert_close(model.loss(logits, target), F.cross_entropy(logits, target))


def test_binary_metrics_include_auroc_multiclass_do_not():
    assert set(make_classifier(num_classes=2).val_metrics.keys()) == {"val/acc", "val/f1", "val/auroc"}
    assert set(make_classifier(num_classes=3).val_metrics.keys()) == {"val/acc", "val/f1"}


def test_binary_auroc_ranks_positive_class_probability():
    model = make_classifier(num_classes=2)
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.0], [0.0, 3.0]])
    target = torch.tensor([0, 1, 0, 1])  # positive-class probabilities rank 3 of 4 pairs right
    model.update_metrics(model.test_metrics, logits, target)
    scores = model.test_metrics.compute()
    assert scores["test/auroc"].item() == pytest.approx(0.75)
    assert scores["test/acc"].item() == pytest.approx(0.5)


def test_predict_step_returns_class_probabilities():
    model = make_classifier().eval()
    x = torch.randn(5, 4)
    probs = model.predict_step((x, torch.zeros(5, dtype=torch.long)), 0)
    torch.testing.assert_close(probs, model(x).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


# --- optimisation ------------------------------------------------------------------------------------
def test_param_groups_name_every_layer_group_once():
    model = make_classifier()
    groups = model.param_groups()
    assert [g["name"] for g in groups] == [
        "backbone.block0",
        "backbone.block0.no_decay",
        "backbone.block1",
        "backbone.block1.no_decay",
        "head",
        "head.no_decay",
    ]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_only_weight_matrices_decay():
    model = make_classifier(backbone_kwargs={"hidden_sizes": (8,), "norm": "layer"})
    for group in model.param_groups():
        if group["name"].endswith(".no_decay"):
            assert group["weight_decay"] == 0.0
            assert all(p.dim() < 2 for p in group["params"])
        else:
            assert "weight_decay" not in group
            assert all(p.dim() >= 2 for p in group["params"])
    norm = model.backbone.blocks[0][1]
    no_decay_ids = {id(p) for g in model.param_groups() if g["name"].endswith(".no_decay") for p in g["params"]}
    assert {id(norm.weight), id(norm.bias), id(model.head.fc.bias)} <= no_decay_ids


def test_optimizer_keeps_its_weight_decay_except_on_no_decay_groups():
    model = make_classifier(optimizer=partial(torch.optim.AdamW, lr=0.01, weight_decay=0.3))
    optimizer = model.configure_optimizers()
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay["backbone.block0"] == 0.3 and decay["head"] == 0.3
    assert decay["backbone.block0.no_decay"] == 0.0 and decay["head.no_decay"] == 0.0
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)


def test_plateau_scheduler_monitors_val_loss():
    model = make_classifier(lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=2))
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]


def test_other_schedulers_need_no_monitor():
    model = make_classifier(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    assert "monitor" not in model.configure_optimizers()["lr_scheduler"]


# --- it learns ---------------------------------------------------------------------------------------
def _separable(n: int, generator: torch.Generator) -> TensorDataset:
    """Three classes split by fixed linear scores: the label is the argmax of ``x @ w``."""
    w = torch.tensor([[2.0, -1.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x @ w).argmax(-1))


def test_classifier_learns_separable_data():
    g = torch.Generator().manual_seed(0)
    train, val = _separable(384, g), _separable(256, g)
    model = make_classifier(optimizer=partial(torch.optim.AdamW, lr=0.02))
    trainer = tiny_trainer(max_epochs=8)
    before = trainer.validate(model, DataLoader(val, batch_size=64), verbose=False)[0]["val/acc"]
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))
    after = trainer.validate(model, DataLoader(val, batch_size=64), verbose=False)[0]
    assert after["val/acc"] >= 0.9 > before
    assert after["val/loss"] < 0.4


@pytest.mark.parametrize("task", ["classifier", "regressor"])
def test_training_metrics_cover_every_batch_of_the_epoch(task, monkeypatch):
    # The task updates its training metrics for several batches at once; with 3 a time, an epoch of 7 batches
    # flushes after batches 3 and 6, and the last batch at the epoch's end.
    import torchmetrics.functional as M

    import zoo.tasks.base

    monkeypatch.setattr(zoo.tasks.base, "TRAIN_METRICS_BATCHES", 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 4, generator=g)
    y = torch.randint(0, 3, (70,), generator=g) if task == "classifier" else torch.randn(70, generator=g)
    model = (make_classifier if task == "classifier" else make_regressor)(optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=10))
    model.eval()
    with torch.no_grad():
        out = model(x)
    logged = trainer.callback_metrics
    if task == "classifier":
        assert float(logged["train/acc"]) == pytest.approx(
            float(M.accuracy(out, y, "multiclass", num_classes=3, average="micro")), abs=1e-6
        )
        assert float(logged["train/f1"]) == pytest.approx(
            float(M.f1_score(out, y, "multiclass", num_classes=3, average="macro")), abs=1e-6
        )
    else:
        assert float(logged["train/mae"]) == pytest.approx(float(M.mean_absolute_error(out.squeeze(-1), y)), abs=1e-6)
    assert not model._train_metrics_buffer


# --- Regressor ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_targets", [None, 0])
def test_regressor_without_targets_points_to_classifier(num_targets):
    with pytest.raises(ConfigError, match=rf"num_targets={num_targets}.*zoo.tasks.Classifier"):
        make_regressor(num_targets=num_targets)


def test_regressor_target_stats_must_match_num_targets():
    with pytest.raises(ConfigError, match="target_mean has 2 values but the data has 1 targets"):
        make_regressor(target_mean=[1.0, 2.0])


def test_regressor_loss_standardises_targets():
    model = make_regressor(target_mean=[100.0], target_std=[10.0])
    output, target = torch.randn(6, 1), 100 + 10 * torch.randn(6)
    torch.testing.assert_close(model.loss(output, target), F.mse_loss(output, ((target - 100) / 10).view(6, 1)))


@pytest.mark.parametrize("loss, fn", [("mae", F.l1_loss), ("huber", F.huber_loss)])
def test_regressor_loss_choice(loss, fn):
    model = make_regressor(loss=loss, target_mean=[5.0], target_std=[2.0])
    output, target = torch.randn(6, 1), torch.randn(6) * 4
    torch.testing.assert_close(model.loss(output, target), fn(output, ((target - 5) / 2).view(6, 1)))


def test_regressor_predicts_in_original_units():
    model = make_regressor(target_mean=[100.0], target_std=[10.0]).eval()
    x = torch.randn(5, 4)
    pred = model.predict_step((x, torch.zeros(5)), 0)
    assert pred.shape == (5, 1)
    torch.testing.assert_close(pred, model(x) * 10 + 100)


def test_regressor_metrics_are_in_original_units():
    model = make_regressor(target_mean=[100.0], target_std=[10.0])
    output = torch.tensor([[0.0], [1.0], [-1.0], [0.5]])  # standardised: 100, 110, 90, 105 in data units
    target = torch.tensor([102.0, 108.0, 91.0, 100.0])
    model.update_metrics(model.val_metrics, output, target)
    scores = model.val_metrics.compute()
    pred = torch.tensor([100.0, 110.0, 90.0, 105.0])
    err = pred - target
    r2 = 1 - err.pow(2).sum() / (target - target.mean()).pow(2).sum()
    assert scores["val/mae"].item() == pytest.approx(err.abs().mean().item())
    assert scores["val/rmse"].item() == pytest.approx(err.pow(2).mean().sqrt().item())
    assert scores["val/r2"].item() == pytest.approx(r2.item(), rel=1e-5)


def test_regressor_defaults_to_identity_scaling():
    model = make_regressor()
    output, target = torch.randn(6, 1), torch.randn(6)
    torch.testing.assert_close(model.loss(output, target), F.mse_loss(output, target.view(6, 1)))
