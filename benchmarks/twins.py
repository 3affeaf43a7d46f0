"""The two sides of a benchmark: the zoo (a task from the registry under a Lightning Trainer configured as the
zoo's CLI configures it) and its plain-PyTorch twin (the same network, data, optimizer and seed in a
hand-written loop).

Both sides build their network from the same registry call after the same seed, so their weights are equal
at the start and their losses stay equal (to float rounding) through training.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from benchmarks.common import Stopwatch

# What the Trainer is told in Lightning's own parity test (tests/parity_pytorch/test_basic_parity.py): nothing
# but the loop. The zoo's defaults (logger, checkpoints, summary) are added by ``zoo_trainer(defaults=True)``.
BARE = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
}


# --- data ---------------------------------------------------------------------------------------------------
def synthetic_classification(n: int, shape: Sequence[int], num_classes: int, seed: int) -> TensorDataset:
    """``n`` random inputs whose class is a fixed random linear function of them (learnable, in memory)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    w = torch.randn(x[0].numel(), num_classes, generator=g)
    return TensorDataset(x, (x.flatten(1) @ w).argmax(1))


class EpochShuffle(Sampler[int]):
    """A new permutation each time it is iterated (once per epoch), drawn from ``seed`` and the epoch alone.

    A shared generator would not do: with one, Lightning's loop and a plain ``for`` loop drew different orders
    from the second epoch on (they consume the generator differently around an epoch's end).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        return iter(order.tolist())


def loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, **kw: Any) -> DataLoader:
    """A DataLoader over in-memory data whose shuffling depends only on the seed and the epoch, so both sides
    see the same batches in the same order."""
    sampler = EpochShuffle(len(dataset), seed) if shuffle else None  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kw)


def recipe(path: str) -> dict[str, Any]:
    """The model of a zoo config (an experiment or a ``configs/model`` file): backbone, its arguments, the
    optimizer class and arguments, label smoothing, and the data's batch size where the config has one."""
    import importlib

    import yaml

    from benchmarks.common import ROOT

    config = yaml.safe_load((ROOT / path).read_text())
    model = config.get("model", config)
    args = model.get("init_args", {})
    optimizer = args.get("optimizer", {"class_path": "torch.optim.AdamW"})
    module, _, name = optimizer["class_path"].rpartition(".")
    return {
        "backbone": args.get("backbone", "mlp"),
        "backbone_kwargs": dict(args.get("backbone_kwargs") or {}),
        "optimizer": getattr(importlib.import_module(module), name),
        "optimizer_kwargs": dict(optimizer.get("init_args") or {}),
        "label_smoothing": float(args.get("label_smoothing", 0.0)),
        "batch_size": ((config.get("data") or {}).get("init_args") or {}).get("batch_size"),
    }


def datamodule(path: str, **overrides: Any) -> Any:
    """The datamodule of a zoo config (an experiment's ``data`` or a ``configs/data`` file), built from its
    ``class_path`` and ``init_args`` as the CLI would, with ``overrides``."""
    import importlib

    import yaml

    from benchmarks.common import ROOT

    config = yaml.safe_load((ROOT / path).read_text())
    data = config.get("data", config)
    module, _, name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**(data.get("init_args") or {}), **overrides})


def zoo_classifier(spec: dict[str, Any], input_shape: Sequence[int], num_classes: int, **task: Any) -> Any:
    """A ``zoo.tasks.Classifier`` from a :func:`recipe`, with other task arguments in ``task``."""
    from functools import partial

    from zoo.tasks import Classifier

    return Classifier(
        backbone=spec["backbone"],
        backbone_kwargs=spec["backbone_kwargs"],
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        label_smoothing=spec["label_smoothing"],
        optimizer=partial(spec["optimizer"], **spec["optimizer_kwargs"]),
        **task,
    )


def plain_twin(spec: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, Any, Any]:
    """The plain side of a :func:`recipe`: network, optimizer (decay on matrices and kernels only, as the zoo's
    parameter groups) and loss function."""
    from functools import partial

    net = plain_net(spec["backbone"], input_shape, num_classes, **spec["backbone_kwargs"])
    kwargs = dict(spec["optimizer_kwargs"])
    weight_decay = kwargs.pop("weight_decay", _default_weight_decay(spec["optimizer"]))
    optimizer = spec["optimizer"](decay_groups(net, weight_decay), **kwargs)
    return net, optimizer, partial(F.cross_entropy, label_smoothing=spec["label_smoothing"])


def _default_weight_decay(optimizer: type) -> float:
    import inspect

    return float(inspect.signature(optimizer).parameters["weight_decay"].default)


# --- the zoo side -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's info lines and warnings (GPU available, few workers, ...) during a timed run."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def zoo_trainer(max_epochs: int = 1, max_steps: int = -1, defaults: bool = False, **kw: Any) -> Any:
    """A Trainer as the zoo's CLI builds it.

    ``defaults=False``: Lightning's parity settings (no progress bar, summary, checkpoints or logger).
    ``defaults=True``: the Trainer ``zoo fit`` builds (:func:`cli_trainer`), progress bar and pictures off: the
    CSV logger, ModelCheckpoint on ``val/loss`` (best and last), the model summary, the LR and gradient-norm
    monitors, EarlyStopping and the FineTuning callback at the time of writing, with the recipes'
    ``log_every_n_steps=10``.
    """
    from lightning.pytorch import Trainer

    if defaults:
        return cli_trainer(max_epochs, max_steps, **kw)
    with quiet():
        return Trainer(
            **{"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "max_steps": max_steps, **BARE, **kw}
        )


def cli_trainer(max_epochs: int, max_steps: int = -1, **kw: Any) -> Any:
    """The Trainer that ``zoo fit`` builds (:func:`zoo.run.build.build`), with its default callbacks and
    CSV logger under ``./runs``, the progress bar and pictures off. The CLI parses a minimal config for it."""
    from zoo.run.build import build

    args = [
        "--model=zoo.tasks.Classifier",
        "--model.backbone=mlp",
        "--data=datamodules.SklearnTabular",
        f"--trainer.max_epochs={max_epochs}",
        f"--trainer.max_steps={max_steps}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=10",
        "--pictures=false",
        *[f"--trainer.{k}={v}" for k, v in kw.items()],
    ]
    with quiet():
        return build(args)[2]


def fit_zoo(task: Any, trainer: Any, train: DataLoader, val: Optional[DataLoader] = None) -> dict[str, Any]:
    """``trainer.fit`` timed; returns seconds (set-up inside ``fit`` included), loop seconds (from the start of
    the first epoch to the end of training, what a plain loop's timing covers) and the loop's CPU seconds in this
    thread (what other processes on a loaded machine disturb least), steps and the last losses."""
    clock = loop_clock()
    trainer.callbacks.append(clock)
    with quiet(), Stopwatch() as sw:
        trainer.fit(task, train_dataloaders=train, val_dataloaders=val)
    trainer.callbacks.remove(clock)
    metrics = trainer.callback_metrics
    return {
        "seconds": sw.seconds,
        "loop_seconds": clock.end - clock.start,
        "loop_cpu_seconds": clock.cpu_end - clock.cpu_start,
        "steps": trainer.global_step,
        "train_loss": float(metrics["train/loss"]) if "train/loss" in metrics else None,
        "val_loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
    }


def stock_lightning(net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor]) -> Any:
    """The plain twin as a user would write it for stock Lightning: a ``LightningModule`` around the same network,
    optimizer and loss, logging its losses, with nothing of the zoo's."""
    from lightning.pytorch import LightningModule

    class StockModule(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = loss_fn(self(x), y)
            self.log("train/loss", loss, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/loss", loss_fn(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer

    return StockModule()


def loop_clock() -> Any:
    """A callback timing the training loop, in wall and in this thread's CPU seconds: from ``on_train_start``
    (after the set-up of the strategy, the optimizers and the loaders) to ``on_train_end``. Lightning is imported
    here: only the zoo side needs it."""
    from lightning.pytorch import Callback

    class LoopClock(Callback):
        start = end = cpu_start = cpu_end = 0.0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.thread_time()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.thread_time()

    return LoopClock()


# --- the plain side -----------------------------------------------------------------------------------------
class PlainNet(nn.Module):
    """The zoo's network without the task: ``head(backbone.forward_features(x))``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Any) -> torch.Tensor:
        # Sequence batches are dicts (x and mask), passed as keyword arguments, as the zoo's task does.
        features = self.backbone.forward_features(**x) if isinstance(x, dict) else self.backbone.forward_features(x)
        return self.head(features)


def plain_net(backbone: str, input_shape: Sequence[int], num_classes: int, **backbone_kwargs: Any) -> PlainNet:
    """The same modules a ``zoo.tasks.Classifier`` builds, in the same order (so equal seeds give equal weights)."""
    from zoo.heads import ClassificationHead
    from zoo.registry import create_backbone

    body = create_backbone(backbone, input_shape=tuple(input_shape), **backbone_kwargs)
    return PlainNet(body, ClassificationHead(body.num_features, num_classes))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The usual hand-written split: weight decay on matrices and kernels, none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def fit_plain(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: DataLoader,
    epochs: int,
    val: Optional[DataLoader] = None,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    max_steps: Optional[int] = None,
) -> dict[str, Any]:
    """The hand-written loop: train, then evaluate the loss on ``val`` each epoch; timed as a whole."""
    steps, train_loss, val_loss = 0, None, None
    with Stopwatch() as sw:
        for _ in range(epochs):
            model.train()
            total, count = torch.zeros(()), 0
            for x, y in train:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(y)
                count += len(y)
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            train_loss = float(total) / count
            if val is not None:
                val_loss = evaluate(model, val, loss_fn)
            if max_steps is not None and steps >= max_steps:
                break
    return {"seconds": sw.seconds, "steps": steps, "train_loss": train_loss, "val_loss": val_loss}


@torch.no_grad()
def evaluate(model: nn.Module, data: DataLoader, loss_fn: Callable[..., torch.Tensor] = F.cross_entropy) -> float:
    """Mean loss over ``data`` in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for x, y in data:
        total += float(loss_fn(model(x), y)) * len(y)
        count += len(y)
    return total / count


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two networks' parameters, matched in order."""
    pa, pb = list(a.parameters()), list(b.parameters())
    if len(pa) != len(pb):
        raise ValueError(f"the networks differ: {len(pa)} and {len(pb)} parameter tensors")
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(pa, pb))
