"""The task: a backbone and a head, the loss, metrics per stage, and the optimizer's parameter groups.

Tasks know about learning; the network comes from the registry and the data facts (input shape,
number of classes) come from the datamodule through the CLI's ``link_arguments``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from zoo.compat import attached_trainer, should_update_logs
from zoo.errors import ConfigError, TrainingError
from zoo.registry import create_backbone, get_backbone_entry

STAGES = ("train", "val", "test")
NO_DECAY = ".no_decay"  # suffix of the optimizer group of a layer group's biases and norms (weight_decay=0)
TRAIN_METRICS_BATCHES, TRAIN_METRICS_ELEMENTS = 32, 1 << 18  # training outputs kept before the metrics update
# The key of a batch input that holds the backbone's features ``(B, num_features)`` instead of its input: what
# zoo.callbacks.FeatureCache serves while the backbone is a fixed feature extractor.
CACHED_FEATURES = "cached_features"


def init_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The arguments ``cls(...)`` takes by name, as LightningCLI (jsonargparse) reads them: its ``__init__``'s
    and, where that passes ``**kwargs`` on to its parent's (a task declares only the arguments it adds), the
    parent's too."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            own = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            break
        for name, param in own.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                found.setdefault(name, param)
        if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
            break
    return found


class ZooTask(LightningModule):
    """Base of the zoo's tasks: builds ``self.backbone`` from the registry and ``self.head`` from the subclass.

    A subclass declares the arguments it adds and passes the others on with ``**kwargs``; LightningCLI follows
    them here, so it still knows every argument's type and refuses an unknown key, as Python does.

    Args:
        backbone: a registered backbone name (``zoo models`` lists them), a pretrained source's name, or the
            class path of your own network (``mypkg.nets.MyNet``, checked by :mod:`zoo.backbones.user`).
        backbone_kwargs: the backbone's own arguments, checked against its signature.
        pretrained: the backbone's weights. None (default): pretrained for a source prefix (``timm/``,
            ``torchvision/``, ``hf/``, ``zoo/``), random for the zoo's own families. True: by name, from
            the library's cache or the hub. A path: a local weights file (a directory for ``hf/``). False:
            random init of the same architecture (a from-scratch baseline).
        input_shape: one sample's shape without the batch dimension; linked from the datamodule.
        vocab_size: size of the token vocabulary for text data; linked from the datamodule and passed
            to the backbone (which then embeds token ids).
        head_dropout: dropout between the backbone's features and the head's linear layer.
        optimizer: any ``torch.optim`` class by ``class_path`` with its ``init_args``.
        lr_scheduler: an optional ``torch.optim.lr_scheduler`` or ``zoo.schedules`` class by ``class_path``.
            Cyclic and warmup schedules step after every optimizer step, the others after every epoch; an
            unset ``total_steps`` is counted from the trainer; ReduceLROnPlateau follows ``val/loss`` (or the
            ``monitor`` of ``lightning.pytorch.cli.ReduceLROnPlateau``).
        l1_penalty: weight of an L1 penalty on the weight matrices and kernels (the parameters that get
            weight decay) added to the training loss; L2 is the optimizer's ``weight_decay``.
        memory_format: ``auto`` keeps convolutional image models in ``channels_last`` (1.1-1.3x faster training
            measured on CPU, more with AMP on GPUs), others contiguous; or force ``channels_last`` /
            ``contiguous``.
        categories: the cardinality of each categorical column of tabular data, whose codes are the last
            columns of the input; linked from the datamodule (:class:`datamodules.TabularCSV`) and passed to the
            backbone, which embeds them (``tabular_mlp``). None: no categorical columns.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"
    # Whether a step needs only the backbone's features and the label (not the input itself, as an autoencoder's
    # target is), so that a frozen backbone's features can be computed once (zoo.callbacks.FeatureCache).
    learns_from_features: bool = True

    def __init__(
        self,
        backbone: str = "mlp",
        backbone_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Union[bool, str, None] = None,
        input_shape: Optional[tuple[int, ...]] = None,
        vocab_size: Optional[int] = None,
        head_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        l1_penalty: float = 0.0,
        memory_format: Literal["auto", "channels_last", "contiguous"] = "auto",
        categories: Optional[list[int]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # this class's arguments and the subclass's, from both frames
        self._prune_hparams()
        if input_shape is None:
            raise ConfigError(
                "model.input_shape is not set: it comes from the datamodule when run through `zoo`; "
                "pass input_shape=(C, H, W) or (features,) when building a task in Python"
            )
        self.backbone_name = backbone
        self.input_shape = tuple(input_shape)
        data_facts: dict[str, Any] = {"input_shape": self.input_shape}
        if vocab_size is not None:
            data_facts["vocab_size"] = vocab_size
        if categories:
            data_facts["categories"] = list(categories)
            if "categories" not in get_backbone_entry(backbone).parameters():
                raise ConfigError(
                    f"the data has {len(categories)} categorical column(s), which backbone {backbone!r} cannot "
                    "embed; use model.backbone: tabular_mlp, or leave them out of data.feature_columns"
                )
        self.backbone = create_backbone(backbone, pretrained=pretrained, **data_facts, **(backbone_kwargs or {}))
        self.head_dropout = head_dropout
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        if l1_penalty < 0:
            raise ConfigError(f"model.l1_penalty={l1_penalty} must be >= 0")
        self.l1_penalty = l1_penalty
        self.memory_format = memory_format
        self._train_loss_sum: Union[float, torch.Tensor] = 0.0  # this epoch's, for its mean (see _log_train_step)
        self._train_seen = 0
        self._train_metrics_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []  # see _buffer_train_metrics
        # Lets the model summary show each layer's input and output sizes.
        self.example_input_array = self.backbone.example_input(self.input_shape)

    def _prune_hparams(self) -> None:
        # The CLI links every data fact to every task (num_classes, target_mean, ...); keep only the
        # ones this task takes, so `load_from_checkpoint` and `--ckpt_path` rebuild it cleanly.
        accepted = init_arguments(type(self))
        for key in [k for k in self.hparams if k not in accepted and not k.startswith("_")]:
            del self.hparams[key]

    @property
    def channels_last(self) -> bool:
        """Whether the model trains in ``channels_last``: asked for, or ``auto`` with a convolutional image model."""
        return self.memory_format == "channels_last" or (
            self.memory_format == "auto"
            and len(self.input_shape) == 3
            and any(isinstance(m, nn.Conv2d) for m in self.modules())
        )

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def example_input_array(self) -> Any:
        example = self._example_input_array
        # Lightning's model summary feeds this as is; under 'bf16-true' / '16-true' the weights are cast, so the
        # example must be too, as the precision plugin does for every real batch.
        if example is not None and attached_trainer(self) is not None:
            example = self.trainer.precision_plugin.convert_input(example)
        return example

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    # --- the network ---------------------------------------------------------------------------
    def forward(self, x: Union[torch.Tensor, Mapping[str, torch.Tensor]]) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: Union[torch.Tensor, Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """``(B, num_features)``. Sequence and text batches are dicts (``x`` and ``mask``, or a
        tokenizer's ``input_ids`` and ``attention_mask``) passed to the backbone as keyword arguments; a dict
        holding :data:`CACHED_FEATURES` already holds the features of a fixed backbone."""
        if isinstance(x, Mapping):
            if CACHED_FEATURES in x:
                return x[CACHED_FEATURES]
            return self.backbone.forward_features(**x)
        return self.backbone.forward_features(x)

    def predictions(self, output: torch.Tensor) -> torch.Tensor:
        """What the network's output ``self(x)`` means, as ``predict_step`` returns it (class probabilities,
        values in the targets' units...); here the output itself."""
        return output

    # --- one shared step per stage -------------------------------------------------------------
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def make_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def _init_metrics(self) -> None:
        # ModuleDict keys cannot be "train" (an nn.Module method), so each stage gets an attribute.
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", self.make_metrics().clone(prefix=f"{stage}/"))

    def target_of(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        """What the output is compared with: the label, or the input itself for an autoencoder."""
        return y

    def shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        y = self.target_of(x, y)
        output = self(x)
        loss = self.loss(output, y)
        if stage == "train" and self.l1_penalty > 0:
            l1 = sum(p.abs().sum() for p in self.parameters() if p.requires_grad and p.dim() >= 2)
            self.log("train/l1", l1, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.l1_penalty * l1
        metrics = getattr(self, f"{stage}_metrics")
        if stage == "train":
            self._buffer_train_metrics(output.detach(), y)
            self._log_train_step(loss, len(y))
            return loss
        self.update_metrics(metrics, output.detach(), y)
        # Under DDP each process sees a shard: epoch-level val / test losses are averaged over processes (the
        # torchmetrics sync themselves), so every rank, the checkpoint monitor and early stopping see one value.
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def _log_train_step(self, loss: torch.Tensor, size: int) -> None:
        # Every self.log costs ~0.3 ms in Lightning's bookkeeping, as much as a small model's step: the step loss
        # is logged on logging steps only, the epoch's mean loss and metrics once, in on_train_epoch_end.
        self._train_loss_sum = self._train_loss_sum + loss.detach() * size
        self._train_seen += size
        if attached_trainer(self) is not None and should_update_logs(self.trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)

    def _buffer_train_metrics(self, output: torch.Tensor, target: torch.Tensor) -> None:
        # Updating torchmetrics costs ~0.1 ms a batch (as much as 5 % of a small model's step), and training
        # metrics are only logged per epoch: batches are kept and the metrics updated once for many of them.
        # The metrics are sums over samples, so the result is the same. Outputs are bounded to ~1 MiB.
        buffer = self._train_metrics_buffer
        buffer.append((output, target))
        if len(buffer) >= TRAIN_METRICS_BATCHES or sum(o.numel() for o, _ in buffer) >= TRAIN_METRICS_ELEMENTS:
            self._flush_train_metrics()

    def _flush_train_metrics(self) -> None:
        buffer = self._train_metrics_buffer
        if buffer:
            outputs, targets = zip(*buffer)
            self.update_metrics(self.train_metrics, torch.cat(outputs), torch.cat(targets))
            buffer.clear()

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum, self._train_seen = 0.0, 0
        self._train_metrics_buffer.clear()

    def on_train_epoch_end(self) -> None:
        self._flush_train_metrics()
        if not self._train_seen:
            return
        self.log("train/loss", self._train_loss_sum / self._train_seen, on_epoch=True)
        self.log_dict(self.train_metrics.compute(), on_epoch=True)  # synced across processes by torchmetrics
        self.train_metrics.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "test")

    def on_fit_start(self) -> None:
        # A backbone fitted to the data before training (zoo.backbones.rocket's biases) is fitted here, once: a
        # checkpoint restores it before this hook, and its `fitted` buffer then says so.
        fit = getattr(self.backbone, "fit_to_data", None)
        if callable(fit) and not bool(getattr(self.backbone, "fitted", False)):
            fit(self._fitting_inputs())

    def on_validation_start(self) -> None:
        self._check_fitted("validate")

    def on_test_start(self) -> None:
        self._check_fitted("test")

    def on_predict_start(self) -> None:
        self._check_fitted("predict")

    def _check_fitted(self, command: str) -> None:
        """A backbone fitted to the data before training that never was scores noise: refused, naming the fix."""
        if getattr(self.backbone, "fit_to_data", None) is not None and not bool(getattr(self.backbone, "fitted", True)):
            raise ConfigError(
                f"backbone {self.backbone_name!r} is fitted to the training data when training starts and this "
                f"model never trained: give `zoo {command}` a checkpoint of it (--ckpt_path), or train it first"
            )

    def _fitting_inputs(self) -> Any:
        """The training inputs in one seeded order, the same on every process (the training loader's sampler
        is per process), moved to this model's device."""
        from torch.utils.data import DataLoader, Subset

        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        if datamodule is None or dataset is None:
            raise ConfigError(
                f"backbone {self.backbone_name!r} is fitted to the training data before training and needs a zoo "
                "datamodule (data: in the config) to read it from"
            )
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        loader = DataLoader(Subset(dataset, order.tolist()), batch_size=64, collate_fn=datamodule.collate_fn())
        for inputs, _ in loader:
            yield self.transfer_batch_to_device(inputs, self.device, 0)

    def on_train_start(self) -> None:
        batches, accumulate = self.trainer.num_training_batches, self.trainer.accumulate_grad_batches
        if math.isfinite(batches) and accumulate > batches:
            # Lightning would step once per epoch on fewer batches than asked: a different, silent batch size.
            raise ConfigError(
                f"trainer.accumulate_grad_batches={accumulate} but an epoch has only {batches} training batches: "
                f"each optimizer step would see {batches}, not {accumulate}; lower accumulate_grad_batches or the "
                "data's batch_size"
            )

    # --- optimisation --------------------------------------------------------------------------
    def named_layer_groups(self) -> dict[str, nn.Module]:
        """Every trainable part by name, stem to top: the backbone's layer groups, then the head."""
        groups = {f"backbone.{name}": module for name, module in self.backbone.layer_groups().items()}
        groups["head"] = self.head
        return groups

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per layer group and decay kind, each named for the LR monitor.

        Weight decay applies to weight matrices and kernels only (``p.dim() >= 2``), never to biases or
        norm parameters; their groups carry ``weight_decay=0``.
        """
        seen: set[int] = set()
        groups: list[dict[str, Any]] = []
        for name, module in self.named_layer_groups().items():
            params = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            if decay:
                groups.append({"name": name, "params": decay})
            if no_decay:
                groups.append({"name": f"{name}{NO_DECAY}", "params": no_decay, "weight_decay": 0.0})
        missing = [n for n, p in self.named_parameters() if id(p) not in seen]
        if missing:
            raise RuntimeError(f"parameters outside every layer group (a backbone bug): {missing[:5]}")
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.lr_scheduler_factory is None:
            return optimizer
        factory = self.lr_scheduler_factory
        if _needs_total_steps(factory):  # OneCycleLR, zoo.schedules.WarmupCosineLR: count them here
            factory = partial(factory, total_steps=self._total_steps())
        scheduler = factory(optimizer)
        # Cyclic and warmup schedules are defined over optimizer steps; the others over epochs.
        per_step = isinstance(scheduler, (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR))
        per_step = per_step or getattr(scheduler, "interval", None) == "step"
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "step" if per_step else "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # lightning.pytorch.cli.ReduceLROnPlateau takes `monitor` in its init_args; torch's follows the task.
            config["monitor"] = self._checked_monitor(getattr(scheduler, "monitor", None) or self.monitor)
            config["strict"] = False  # like early stopping, it waits while there is no validation metric yet
        return {"optimizer": optimizer, "lr_scheduler": config}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().optimizer_step(*args, **kwargs)
        except RuntimeError as err:  # e.g. lr=1e300: a hyperparameter float32 cannot hold
            if "overflow" not in str(err):
                raise
            raise TrainingError(
                f"the optimizer step at epoch {self.current_epoch}, step {self.global_step} overflowed ({err}): a "
                "hyperparameter is too large for the parameters' precision. Lower the learning rate "
                "(model.optimizer.init_args.lr) or the other optimizer settings"
            ) from None

    def _total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ConfigError(
                "the LR schedule needs the run's length in optimizer steps, but the run has no end "
                "(trainer.max_epochs=-1 and no max_steps): set trainer.max_epochs or max_steps, or the "
                "scheduler's total_steps"
            )
        return int(steps)

    def logged_metric_names(self, stage: str) -> list[str]:
        """The epoch-level names this task logs for a stage (``val/loss``, ``val/acc``, ...)."""
        return [f"{stage}/loss", *getattr(self, f"{stage}_metrics").keys()]

    def _checked_monitor(self, monitor: str) -> str:
        known = self.logged_metric_names("train") + self.logged_metric_names("val")
        if monitor not in known:
            raise ConfigError(
                f"ReduceLROnPlateau monitors {monitor!r}, which this task does not log; use one of {known} "
                "(class_path lightning.pytorch.cli.ReduceLROnPlateau takes init_args.monitor and mode)"
            )
        trainer = attached_trainer(self)
        if monitor.startswith("val/") and trainer is not None and trainer.limit_val_batches == 0:
            raise ConfigError(
                f"ReduceLROnPlateau monitors {monitor!r} but this run has no validation "
                "(trainer.limit_val_batches=0): enable validation, or monitor 'train/loss' with "
                "class_path lightning.pytorch.cli.ReduceLROnPlateau and init_args.monitor: train/loss"
            )
        return monitor


def _needs_total_steps(factory: Any) -> bool:
    """Whether a scheduler factory has a ``total_steps`` argument left unset (and no ``epochs`` instead)."""
    keywords = getattr(factory, "keywords", None) or {}
    if "total_steps" in keywords:  # LightningCLI's factories carry every init arg as a keyword
        return keywords["total_steps"] is None and keywords.get("epochs") is None
    try:
        param = inspect.signature(factory).parameters.get("total_steps")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is None and keywords.get("epochs") is None
