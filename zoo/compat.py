"""Every use of a dependency's private API (a name with a leading underscore), in one place.

Lightning, timm and torch may rename or drop these between releases; each wrapper here has a test in
``tests/test_compat.py`` that fails the moment one does, and pyproject.toml bounds the versions. Only torch is
imported here at the top, so backbones can use this module without loading Lightning or timm.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
from torch import nn

# --- torch -----------------------------------------------------------------------------------------------
# Every batch norm (1d, 2d, 3d, sync, lazy) derives from it; there is no public base class.
BatchNormBase: type[nn.Module] = torch.nn.modules.batchnorm._BatchNorm

# The list attributes of a torch LR scheduler that hold one learning rate per parameter group.
SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")


def foreach_norm(tensors: list[torch.Tensor], norm_type: float) -> list[torch.Tensor]:
    """The ``norm_type``-norm of each tensor, in one fused call (what ``clip_grad_norm_`` uses)."""
    return list(torch._foreach_norm(tensors, norm_type))


def set_parameter(module: nn.Module, name: str, param: nn.Parameter) -> None:
    """Put ``param`` in ``module``'s parameter table under ``name`` without the checks of
    ``register_parameter`` (which a patched ``register_parameter`` cannot call again)."""
    module._parameters[name] = param


def tensor_version(tensor: torch.Tensor) -> int:
    """How many times the tensor was changed in place (autograd's version counter; ``.data`` edits are not seen)."""
    return int(tensor._version)


def inner_schedulers(scheduler: Any) -> list[Any]:
    """The schedulers a ``SequentialLR`` or ``ChainedScheduler`` runs ([] for any other)."""
    return list(getattr(scheduler, "_schedulers", []))


def mkldnn_bf16_supported() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mkldnn_linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """oneDNN's linear layer on two mkldnn tensors (``torch.mm`` would take MKL's path)."""
    return torch._C._nn.mkldnn_linear(a, b)


# --- argparse (the standard library's, which jsonargparse extends) ---------------------------------------
def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string a parser accepts (``--x``, ``-x``), in the order they were added."""
    return [o for action in parser._actions for o in action.option_strings]


def option_string_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's table from option string to action (jsonargparse's nested keys included)."""
    return parser._option_string_actions


# --- Lightning -------------------------------------------------------------------------------------------
class CheckpointPathHook:
    """Mixin for a LightningCLI subclass: LightningCLI reads the checkpoint given as ``--ckpt_path`` into the
    config in its private ``_parse_ckpt_path``, called right after parsing; this hands that step to the
    subclass's ``parse_checkpoint_path``."""

    def _parse_ckpt_path(self) -> None:
        self.parse_checkpoint_path()

    def parse_checkpoint_path(self) -> None:
        """The subclass's reading of ``--ckpt_path`` into the config."""
        raise NotImplementedError


def subcommand_parser(cli: Any, subcommand: Optional[str]) -> Any:
    """The parser of a LightningCLI subcommand (the main parser where there is none), to report errors with."""
    return cli._parser(subcommand)


def config_get(cli: Any, config: Any, key: str, default: Any = None) -> Any:
    """A LightningCLI config's value at ``key``, inside the subcommand's section where there is one."""
    return cli._get(config, key, default=default)


def instantiate_trainer(cli: Any, trainer_config: dict[str, Any], callbacks: list[Any]) -> Any:
    """LightningCLI's own Trainer construction: the config's callbacks merged with ``callbacks``."""
    return cli._instantiate_trainer(trainer_config, callbacks)


def should_update_logs(trainer: Any) -> bool:
    """Whether this step is a logging step (``log_every_n_steps``), as Lightning's own monitors decide it."""
    return bool(trainer._logger_connector.should_update_logs)


def reload_fit_dataloaders(trainer: Any) -> None:
    """Have a running fit ask its datamodule for the training and validation loaders again, at the start of the
    next epoch (what ``reload_dataloaders_every_n_epochs`` does every n epochs), e.g. after an epoch's end."""
    trainer.fit_loop._combined_loader = None
    trainer.fit_loop.epoch_loop.val_loop._combined_loader = None


def attached_trainer(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or None (``module.trainer`` raises when there is none)."""
    return module._trainer


def ddp_kwargs(strategy: Any) -> dict[str, Any]:
    """The keyword arguments a DDPStrategy will wrap the model with (the live dict: changes apply)."""
    return strategy._ddp_kwargs


def last_step_saved(checkpoint: Any) -> int:
    """The global step of a ModelCheckpoint's latest save."""
    return checkpoint._last_global_step_saved


def saves_on_train_epoch_end(checkpoint: Any, trainer: Any) -> bool:
    """Whether a ModelCheckpoint saves at the end of training epochs (else after validation)."""
    return bool(checkpoint._should_save_on_train_epoch_end(trainer))


def save_last_checkpoint(checkpoint: Any, trainer: Any) -> None:
    """Write a ModelCheckpoint's ``last.ckpt`` now, with the metrics it would save it with."""
    checkpoint._save_last_checkpoint(trainer, checkpoint._monitor_candidates(trainer))


def wandb_init_kwargs(logger: Any) -> dict[str, Any]:
    """The keyword arguments Lightning's WandbLogger will pass to ``wandb.init`` (the live dict)."""
    return logger._wandb_init


def wandb_offline(logger: Any) -> bool:
    """Whether a Lightning WandbLogger logs offline."""
    return bool(logger._offline)


def wandb_run_if_started(logger: Any) -> Any:
    """A Lightning WandbLogger's W&B run if it has started one, else None (``.experiment`` would start it)."""
    return logger._experiment


# --- timm ------------------------------------------------------------------------------------------------
def timm_group_parameters(model: nn.Module, matcher: Any) -> dict[Any, list[str]]:
    """timm's parameter names by group ordinal, stem first, for a model's ``group_matcher`` (its layer-wise
    LR decay uses it)."""
    from timm.models._manipulate import group_parameters

    return group_parameters(model, matcher)
