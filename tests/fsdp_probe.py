"""FSDP on the CPU, for tests/test_distributed.py: configs/trainer/fsdp.yaml run by `zoo fit` in one process (gloo),
with a FineTuning schedule, and what each epoch changed written down.

Two shims, test-only, make Lightning's FSDPStrategy run without a GPU; FSDP itself (flat parameters, one unit per
block, ``use_orig_params``, the full state dict written to the checkpoint) is what a GPU run uses:

- Lightning refuses ``FSDPStrategy`` with a CPU accelerator, but only the class itself, not a subclass;
- torch's FSDP runs on the CPU when given ``device_id=torch.device("cpu")``, where Lightning passes the device's
  index (None on the CPU, which FSDP reads as "find an accelerator").

Given to `zoo fit` as ``--trainer.strategy.class_path=tests.fsdp_probe.CPUFSDPStrategy`` and
``--trainer.callbacks+=tests.fsdp_probe.ChangedGroups --trainer.callbacks.out_dir=DIR``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.fsdp as fsdp
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy


@contextlib.contextmanager
def fsdp_on_cpu() -> Iterator[None]:
    """``torch.distributed.fsdp.FullyShardedDataParallel`` placed on the CPU where no device is given."""
    base = fsdp.FullyShardedDataParallel

    class OnCPU(base):
        def __init__(self, module: torch.nn.Module, *args: Any, device_id: Any = None, **kwargs: Any) -> None:
            super().__init__(module, *args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)

    fsdp.FullyShardedDataParallel = OnCPU
    try:
        yield
    finally:
        fsdp.FullyShardedDataParallel = base


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, wrapping the model on the CPU (gloo)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        # A model wrapped before (the test after fit) is not wrapped again: Lightning checks with isinstance, which
        # the shim's subclass would fail for the blocks torch wrapped with its own class.
        wrapped = any(isinstance(m, fsdp.FullyShardedDataParallel) for m in model.modules())
        with contextlib.nullcontext() if wrapped else fsdp_on_cpu():
            return super()._setup_model(model)


class ChangedGroups(Callback):
    """Writes ``rank<r>.json``: for each training epoch, the layer groups whose (whole, gathered) weights it
    changed; the world size and the number of FSDP units."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.changed: dict[int, list[str]] = {}
        self.before: dict[str, list[torch.Tensor]] = {}

    def _weights(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, list[torch.Tensor]]:
        # Each process holds a shard: the whole weights are gathered (every process takes part) to compare.
        with fsdp.FullyShardedDataParallel.summon_full_params(trainer.model, writeback=False):
            groups = dict(pl_module.named_layer_groups())
            return {n: [p.detach().clone() for p in m.parameters()] for n, m in groups.items()}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.before = self._weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        after = self._weights(trainer, pl_module)
        self.changed[trainer.current_epoch] = [
            name
            for name, weights in after.items()
            if any(w.shape != b.shape or not torch.equal(w, b) for w, b in zip(weights, self.before[name]))
        ]

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        seen = {
            "changed": self.changed,
            "world_size": trainer.world_size,
            "units": sum(isinstance(m, fsdp.FullyShardedDataParallel) for m in trainer.model.modules()),
            "strategy": type(trainer.strategy).__name__,
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))
