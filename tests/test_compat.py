"""zoo.compat: each wrapper of a dependency's private API still finds what it wraps, and it behaves as used.

A failure here means Lightning, timm or torch changed a private name the zoo relies on: fix the wrapper in
zoo/compat.py (and only there), then widen the bound in pyproject.toml.
"""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch
from torch import nn

from zoo import compat


# --- torch -----------------------------------------------------------------------------------------------
def test_batch_norm_base_is_the_base_of_every_batch_norm():
    for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm2d):
        assert issubclass(kind, compat.BatchNormBase), kind
    assert not issubclass(nn.LayerNorm, compat.BatchNormBase)


def test_foreach_norm_is_each_tensors_norm():
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, -1.0], [1.0, -1.0]])]
    assert [float(n) for n in compat.foreach_norm(tensors, 2.0)] == [5.0, 2.0]
    assert [float(n) for n in compat.foreach_norm(tensors, float("inf"))] == [4.0, 1.0]


def test_set_parameter_replaces_a_registered_parameter():
    layer = nn.Linear(2, 3)
    new = nn.Parameter(torch.zeros(3, 2, device="meta"), requires_grad=False)
    compat.set_parameter(layer, "weight", new)
    assert layer.weight is new and dict(layer.named_parameters())["weight"] is new


def test_scheduler_lr_lists_and_inner_schedulers():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    first = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    second = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    chained = torch.optim.lr_scheduler.SequentialLR(optimizer, [first, second], milestones=[2])
    assert compat.inner_schedulers(chained) == [first, second]
    assert compat.inner_schedulers(first) == []
    lists = [name for name in compat.SCHEDULER_LR_LISTS if isinstance(getattr(first, name, None), list)]
    assert {"base_lrs", "_last_lr"} <= set(lists)
    first._last_lr = [v * 2 for v in first._last_lr]  # what FineTuning's scaling does
    assert first.get_last_lr() == first._last_lr


def test_tensor_version_counts_in_place_changes():
    t = torch.zeros(3)
    before = compat.tensor_version(t)
    t.add_(1)
    t[0] = 2.0
    assert compat.tensor_version(t) == before + 2


def test_mkldnn_wrappers():
    assert isinstance(compat.mkldnn_bf16_supported(), bool)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    out = compat.mkldnn_linear(a.to_mkldnn(), b.to_mkldnn()).to_dense()
    torch.testing.assert_close(out, a @ b.T)


# --- argparse --------------------------------------------------------------------------------------------
def test_option_strings_and_actions():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_lr", "-m")
    assert compat.option_strings(parser) == ["-h", "--help", "--max_lr", "-m"]
    assert compat.option_string_actions(parser)["--max_lr"].dest == "max_lr"


# --- Lightning -------------------------------------------------------------------------------------------
def test_lightning_cli_calls_its_checkpoint_path_step_and_has_the_helpers_used():
    from lightning.pytorch.cli import LightningCLI

    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert list(inspect.signature(LightningCLI._parser).parameters) == ["self", "subcommand"]
    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters) == ["self", "config", "callbacks"]
    assert "default" in inspect.signature(LightningCLI._get).parameters


def test_lightning_cli_helpers_behave_as_used(monkeypatch):
    from lightning.pytorch import Trainer

    from zoo.lightning_cli import ZooCLI

    cli = ZooCLI(
        args=[
            "--model=zoo.tasks.Classifier",
            "--model.backbone=mlp",
            "--data=datamodules.SklearnTabular",
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
        ],
        run=False,
    )
    assert compat.subcommand_parser(cli, None) is cli.parser
    assert compat.config_get(cli, cli.config, "trainer.max_epochs") == 1
    assert compat.config_get(cli, cli.config, "not_there", default="d") == "d"
    trainer = compat.instantiate_trainer(cli, {"max_epochs": 2, "logger": False}, [])
    assert isinstance(trainer, Trainer) and trainer.max_epochs == 2


def _trainer(**kwargs):
    from lightning.pytorch import Trainer

    return Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_trainer_logger_connector_and_attached_trainer():
    from lightning.pytorch import LightningModule

    trainer = _trainer(log_every_n_steps=1)
    assert compat.should_update_logs(trainer) in (True, False)
    module = LightningModule()
    assert compat.attached_trainer(module) is None
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


def test_ddp_kwargs_are_the_live_dict():
    from lightning.pytorch.strategies import DDPStrategy

    strategy = DDPStrategy(find_unused_parameters=False)
    compat.ddp_kwargs(strategy)["find_unused_parameters"] = True
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}


def test_model_checkpoint_internals(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = _trainer(callbacks=[checkpoint], default_root_dir=tmp_path)
    assert compat.last_step_saved(checkpoint) == 0  # nothing saved yet
    assert compat.saves_on_train_epoch_end(checkpoint, trainer) in (True, False)
    params = inspect.signature(ModelCheckpoint._save_last_checkpoint).parameters
    assert list(params) == ["self", "trainer", "monitor_candidates"]
    assert list(inspect.signature(ModelCheckpoint._monitor_candidates).parameters) == ["self", "trainer"]


def test_wandb_logger_internals(tmp_path):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="p")
    assert isinstance(compat.wandb_init_kwargs(logger), dict)
    assert compat.wandb_init_kwargs(logger)["project"] == "p"
    assert compat.wandb_offline(logger) is True
    assert compat.wandb_run_if_started(logger) is None  # no run until .experiment is asked for


# --- timm ------------------------------------------------------------------------------------------------
def test_timm_group_parameters():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    groups = compat.timm_group_parameters(model, model.group_matcher(coarse=True))
    names = [n for group in groups.values() for n in group]
    assert len(groups) > 2 and names[0].startswith("conv1")
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_reload_fit_dataloaders_has_the_fit_ask_its_datamodule_again():
    from lightning.pytorch import Callback, Trainer

    from datamodules import Digits
    from zoo.tasks import Classifier

    class Reload(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: object) -> None:
            compat.reload_fit_dataloaders(trainer)

    class Counted(Digits):
        def __init__(self) -> None:
            super().__init__(batch_size=256, samples_per_class=10)
            self.asked = {"train": 0, "val": 0}

        def train_dataloader(self) -> object:
            self.asked["train"] += 1
            return super().train_dataloader()

        def val_dataloader(self) -> object:
            self.asked["val"] += 1
            return super().val_dataloader()

    dm = Counted()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Reload()],
    )
    trainer.fit(Classifier(backbone="mlp", input_shape=(1, 8, 8), num_classes=10), datamodule=dm)
    assert dm.asked == {"train": 3, "val": 3}  # once for each epoch, not once for the fit
