"""Per-layer statistics of a training run, as `zoo diagnose` and the heat-map pictures read them: gradient norms,
update-to-weight ratios and activation statistics on a fixed validation batch, in ``layer_stats.csv``.

A *layer* is a named module that owns parameters (``Linear``, ``Conv2d``, ``LayerNorm``, an ``LSTM``, a module
holding a positional embedding), or an activation module (ReLU family, sigmoid, tanh, by class name, so timm's and
transformers' own activation classes count too). Activations applied as functions inside a module
(``F.relu`` in a ``forward``) have no module to hook and are not seen.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.optim import Optimizer

from zoo.compat import foreach_norm, should_update_logs
from zoo.diagnosis.record import ACTIVATION, LAYER_STATS_COLUMNS, LAYER_STATS_FILE, PARAM
from zoo.errors import TrainingError
from zoo.run.files import run_folder

log = logging.getLogger(__name__)

RECTIFIER = "rectifier"
# Activations by class name, lower case, less an "activation" suffix (torch's, timm's and transformers' classes:
# GELUActivation, QuickGELU, GELUTanh, MemoryEfficientSwish): a rectifier (units can die) starts or ends with one of
# these; a saturating one ends with "sigmoid" or "tanh", and its outputs outside this band count as saturated.
RECTIFIERS = ("relu", "relu6", "gelu", "silu", "swish", "elu", "selu", "celu", "mish", "softplus")
SATURATING = {"sigmoid": (0.02, 0.98), "tanh": (-0.98, 0.98)}
NOT_ACTIVATIONS = ("logsigmoid",)  # ends like sigmoid, but neither saturates nor dies the same way


def activation_family(module: nn.Module) -> Optional[str]:
    """``"rectifier"`` (ReLU family: units can die), ``"sigmoid"`` or ``"tanh"`` (saturating, their hard versions
    too), or None for a module that is not an activation (one with children never is)."""
    if next(module.children(), None) is not None:
        return None
    name = type(module).__name__.lower().removesuffix("activation")
    if name in NOT_ACTIVATIONS:
        return None
    if name.startswith(RECTIFIERS) or name.endswith(RECTIFIERS):
        return RECTIFIER
    return next((family for family in SATURATING if name.endswith(family)), None)


@dataclass
class Layer:
    """One row per logging step in the file: a module and what applies to it."""

    name: str
    module: nn.Module
    kind: str  # PARAM or ACTIVATION
    family: Optional[str]  # activation_family(module)
    params: list[nn.Parameter]  # its own (recurse=False)


def find_layers(model: nn.Module) -> list[Layer]:
    """The model's layers in ``named_modules`` order: activation modules, and the modules owning parameters."""
    layers = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        family = activation_family(module)
        if family is not None or params:
            layers.append(Layer(name or type(module).__name__, module, ACTIVATION if family else PARAM, family, params))
    return layers


class Output:
    """What one layer's output on the fixed batch adds up to: Python counts, and device scalars (the sum and the
    sum of squares; then the dead units, or the saturated values) read in one transfer after the pass."""

    def __init__(self) -> None:
        self.count = 0  # values
        self.units = 0  # rectifiers: units (summed over calls)
        self.calls: list[list[torch.Tensor]] = []  # each call's scalars (a module may run several times)

    def add(self, output: torch.Tensor, family: Optional[str], channel_first: bool) -> None:
        """One call's output. A unit is a feature (the channel of a convolution's output, else the last
        dimension), dead when it is never above 0 on the whole batch. Few small tensor operations: this runs for
        every layer on each logging step."""
        x = output.detach().float()
        self.count += x.numel()
        scalars = [x.sum(), torch.linalg.vector_norm(x)]  # the norm: the root of the sum of squares
        if family == RECTIFIER and x.dim() >= 2:
            channel = 1 if channel_first or x.dim() >= 4 else x.dim() - 1
            peaks = x.amax(dim=[d for d in range(x.dim()) if d != channel])  # (units,): each one's largest output
            self.units += peaks.numel()
            scalars.append((peaks <= 0).sum())
        elif family in SATURATING:
            low, high = SATURATING[family]
            scalars.append(((x - (low + high) / 2).abs() > (high - low) / 2).sum())
        self.calls.append(scalars)

    @property
    def scalars(self) -> list[torch.Tensor]:
        return [t for call in self.calls for t in call]

    def summary(self, values: list[float], family: Optional[str]) -> list[Optional[float]]:
        """``[mean, std, dead fraction, saturated fraction]`` from the scalars' ``values`` (every call's, in
        order), None where a statistic does not apply."""
        width = len(values) // len(self.calls)
        calls = [values[i : i + width] for i in range(0, len(values), width)]
        total, squares = sum(c[0] for c in calls), sum(c[1] * c[1] for c in calls)
        extra = sum(c[2] for c in calls) if width > 2 else 0.0
        mean = total / self.count
        spread = max(squares - self.count * mean * mean, 0.0) / (self.count - 1) if self.count > 1 else math.nan
        dead = extra / self.units if family == RECTIFIER and self.units else None
        saturated = extra / self.count if family in SATURATING else None
        return [mean, math.sqrt(spread), dead, saturated]


def first_tensor(output: Any) -> Optional[torch.Tensor]:
    """A module output's tensor: itself, or the first of a tuple (an LSTM's ``(out, (h, c))``)."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    return None


# Layers whose output is channel-first, (B, C, L), when it has three dimensions; the others' is (B, L, C).
CHANNEL_FIRST = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.GroupNorm)


class LayerStats(Callback):
    """Writes ``layer_stats.csv`` into the run folder: on each logging step (``trainer.log_every_n_steps``), one
    row per layer, first layer first (forward order)::

        step,epoch,layer,kind,grad_norm,update_ratio,act_mean,act_std,dead_fraction,saturated_fraction

    - ``grad_norm``: the L2 norm of the layer's own parameters' gradients, before clipping (frozen: empty);
    - ``update_ratio``: the norm of the step's change of those parameters over their norm (the learning rate's
      effect, ~1e-3 in a healthy run);
    - ``act_mean``, ``act_std``: of the layer's output on a fixed batch, in eval mode (the first validation batch,
      else the first training batch logged; at most ``max_samples`` samples);
    - ``dead_fraction`` (ReLU family): the fraction of units never above 0 on that batch;
    - ``saturated_fraction`` (sigmoid: outside (0.02, 0.98); tanh: |x| > 0.98): the fraction of outputs.

    ``kind`` is ``param`` or ``activation``; a cell that does not apply is empty. Rows are kept in memory and
    appended at each epoch's end, each checkpoint, the end of training and an error. A resumed fit carries over the
    rows before its checkpoint's step (from the checkpoint's run folder) and appends, so no step is written twice.
    Under DDP the gradients are already averaged: rank 0 computes and writes, the others do nothing.

    Args:
        max_samples: the fixed batch's size at most (the activation pass costs a forward pass of this many).
    """

    def __init__(self, max_samples: int = 32) -> None:
        self.max_samples = max_samples
        self.layers: list[Layer] = []
        self._order: list[int] = []  # indices into self.layers, first layer first, once an activation pass ran
        self._modules: list[nn.Module] = []  # every module of the model, whose modes the activation pass sets
        self._batch: Any = None  # the fixed batch's inputs, on the model's device
        self._no_activations = False  # the model could not be called on the fixed batch: gradients only
        self._pending: Optional[dict[str, Any]] = None  # one logging step's gradient norms and the weights before
        self._rows: list[list[Any]] = []
        self._path: Optional[Path] = None

    # --- the run's file ----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.layers, self._order, self._modules = find_layers(pl_module), [], list(pl_module.modules())
        self._path = run_folder(trainer) / LAYER_STATS_FILE
        kept = self._rows_before(trainer) if trainer.global_step > 0 else []
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LAYER_STATS_COLUMNS)
            writer.writerows(kept)
        self._batch = self._validation_batch(trainer, pl_module)

    def _rows_before(self, trainer: Trainer) -> list[list[str]]:
        """A resumed fit's rows of the steps before its checkpoint's, from the file of the run that wrote it."""
        ckpt = trainer.ckpt_path
        source = run_folder(ckpt) / LAYER_STATS_FILE if ckpt and "://" not in str(ckpt) else self._path
        if source is None or not source.is_file():
            return []
        with open(source, newline="") as f:
            rows = list(csv.reader(f))
        return [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < trainer.global_step]

    def _flush(self) -> None:
        if self._rows and self._path is not None:
            with open(self._path, "a", newline="") as f:
                csv.writer(f).writerows(self._rows)
        self._rows = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._flush()  # every step a checkpoint holds is on disk: a resume from it rewrites none

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._flush()
        if isinstance(exception, TrainingError) and self._path is not None:
            # A run stopped by a non-finite value is the one most in need of a diagnosis: the loggers' rows so
            # far are written first (Lightning finalises them only after this hook).
            from zoo.run.outputs import diagnose_after_fit

            for logger in trainer.loggers:
                logger.save()
            diagnose_after_fit(trainer, exception)

    # --- the statistics of one logging step --------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        # Gradients as the optimizer gets them: after AMP unscaling, before clipping (as GradNormMonitor's).
        if self._path is None or not should_update_logs(trainer):
            return
        with_grad = [(i, p) for i, layer in enumerate(self.layers) for p in layer.params if p.grad is not None]
        trained = [(i, p) for i, layer in enumerate(self.layers) for p in layer.params if p.requires_grad]
        self._pending = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "grad": (
                [i for i, _ in with_grad],
                foreach_norm([p.grad.detach() for _, p in with_grad], 2.0) if with_grad else [],
            ),
            "trained": trained,
            "before": [p.detach().clone() for _, p in trained],  # clones keep each one's memory format
        }

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        trained = [p.detach() for _, p in pending["trained"]]
        changes = foreach_norm([p - b for p, b in zip(trained, pending["before"])], 2.0) if trained else []
        weights = foreach_norm(trained, 2.0) if trained else []
        if self._batch is None:  # no validation data: the first training batch logged stands in
            self._batch = trainer.precision_plugin.convert_input(_inputs_of(batch, self.max_samples))
        found = self._activation_pass(trainer, pl_module)
        scalars = [*pending["grad"][1], *changes, *weights, *(t for out in found.values() for t in out.scalars)]
        values = torch.stack(scalars).tolist() if scalars else []  # one transfer from the device
        grad_owners, update_owners = pending["grad"][0], [i for i, _ in pending["trained"]]
        grads, values = values[: len(grad_owners)], values[len(grad_owners) :]
        changes, weights, values = (
            values[: len(trained)],
            values[len(trained) : 2 * len(trained)],
            values[2 * len(trained) :],
        )
        grad = _per_layer(grads, grad_owners)
        change, weight = _per_layer(changes, update_owners), _per_layer(weights, update_owners)
        acts = {}
        for index, out in found.items():
            acts[index], values = out.summary(values, self.layers[index].family), values[len(out.scalars) :]
        for index in self._order or range(len(self.layers)):
            layer = self.layers[index]
            mean, std, dead, saturated = acts.get(index, [None] * 4)
            ratio = None
            if index in change:  # a layer that trains: zero weights that moved changed infinitely much
                ratio = change[index] / weight[index] if weight[index] else (math.inf if change[index] else 0.0)
            self._rows.append(
                [
                    pending["step"],
                    pending["epoch"],
                    layer.name,
                    layer.kind,
                    *map(_cell, (grad.get(index), ratio, mean, std, dead, saturated)),
                ]
            )

    # --- activations on the fixed batch ------------------------------------------------------------
    def _validation_batch(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        """The first validation batch's inputs (at most ``max_samples``), on the model's device; None without one."""
        datamodule = trainer.datamodule
        if datamodule is None or not callable(getattr(datamodule, "val_dataloader", None)):
            return None
        try:
            # A DataLoader's iterator draws its seed from torch's global generator: forked, so that recording leaves
            # the run's random numbers (and a resumed run's bit-identity with an uninterrupted one) as they were.
            with torch.random.fork_rng(devices=[]):
                batch = next(iter(datamodule.val_dataloader()), None)
        except Exception as err:  # noqa: BLE001  (a datamodule of the user's; the training batch will stand in)
            log.info("layer statistics: no validation batch (%s: %s); a training batch stands in", type(err), err)
            return None
        if batch is None:
            return None
        inputs = pl_module.transfer_batch_to_device(_inputs_of(batch, self.max_samples), pl_module.device, 0)
        return trainer.precision_plugin.convert_input(inputs)

    def _activation_pass(self, trainer: Trainer, pl_module: LightningModule) -> dict[int, Output]:
        """Runs the fixed batch through the model in eval mode, a hook on every layer; each layer's :class:`Output`
        (none for a layer whose forward did not run)."""
        if self._batch is None or self._no_activations:
            return {}
        found: dict[int, Output] = {}
        started: list[int] = []
        last_param: list[Optional[nn.Module]] = [None]  # the latest layer with weights: its output's layout

        def hook(index: int) -> Any:
            layer = self.layers[index]

            def record(module: nn.Module, args: Any, output: Any) -> None:
                tensor = first_tensor(output)
                if tensor is not None:
                    channel_first = isinstance(last_param[0], CHANNEL_FIRST)
                    found.setdefault(index, Output()).add(tensor, layer.family, channel_first)
                if layer.kind == PARAM:
                    last_param[0] = module

            return record

        handles = []
        for index, layer in enumerate(self.layers):
            if not self._order:  # the first pass finds the forward order
                handles.append(layer.module.register_forward_pre_hook(lambda m, a, i=index: started.append(i)))
            handles.append(layer.module.register_forward_hook(hook(index)))
        # Eval mode for the pass, each module's own mode back after it. The attribute is set as nn.Module.train()
        # sets it, less nn.Module.__setattr__'s checks (~3 us a module, on every logging step).
        training = [m for m in self._modules if m.training]
        for module in training:
            object.__setattr__(module, "training", False)
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                pl_module(self._batch)
        except Exception as err:  # noqa: BLE001  (a model this pass cannot call: the gradients are still recorded)
            log.warning("layer statistics: no activation statistics (%s: %s)", type(err).__name__, err)
            self._no_activations = True
            return {}
        finally:
            for handle in handles:
                handle.remove()
            for module in training:
                object.__setattr__(module, "training", True)
        if not self._order:
            self._order = forward_order(list(dict.fromkeys(started)), len(self.layers))
        return found


def forward_order(started: list[int], count: int) -> list[int]:
    """All ``count`` layer indices (``named_modules`` order) in forward order: as their forward began
    (``started``); a layer never called (its weights used by its parent, as attention's output projection) right
    after the layer before it in ``named_modules``."""
    order = list(started)
    for index in range(count):
        if index not in order:
            before = [i for i in range(index) if i in order]
            order.insert(order.index(before[-1]) + 1 if before else 0, index)
    return order


def _per_layer(norms: list[float], owners: list[int]) -> dict[int, float]:
    """Per-layer L2 norms from its tensors' norms: the root of their sum of squares."""
    squares: dict[int, float] = {}
    for owner, norm in zip(owners, norms):
        squares[owner] = squares.get(owner, 0.0) + norm * norm
    return {owner: math.sqrt(square) for owner, square in squares.items()}


def _inputs_of(batch: Any, limit: int) -> Any:
    """A batch's inputs (``x`` of ``(x, y)``), at most ``limit`` samples, detached."""
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    if isinstance(x, torch.Tensor):
        return x[:limit].detach().clone()
    if isinstance(x, dict):
        return {k: v[:limit].detach().clone() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x


def _cell(value: Optional[float]) -> str:
    """A CSV cell: empty where the statistic does not apply; six significant digits."""
    return "" if value is None else f"{value:.6g}"
