"""A test-only callback that writes down what each DDP process saw, for tests/test_distributed.py.

Given to `zoo fit` as ``--trainer.callbacks+=tests.ddp_probe.RankProbe --trainer.callbacks.out_dir=DIR``
(the repo root is on ``sys.path`` since ``cli.py`` lives there, in every process Lightning starts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    """Writes ``rank<r>.json`` (epoch metrics, the first batch's labels, the world size) and ``rank<r>.pt``
    (the final weights).

    Args:
        out_dir: where the files go.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: dict[str, Any] = {"val": {}, "test": {}, "first_labels": None, "world_size": None}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.seen["first_labels"] is None:  # each process's shard of the first batch
            self.seen["first_labels"] = batch[1].tolist()
            self.seen["world_size"] = trainer.world_size

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:  # after the epoch's metrics are reduced (and synced where asked)
            self.seen["val"][trainer.current_epoch] = _metrics(trainer, "val/")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["test"] = _metrics(trainer, "test/")
        self._write(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)
        torch.save(pl_module.state_dict(), self.out_dir / f"rank{trainer.global_rank}.pt")

    def _write(self, trainer: Trainer) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def _metrics(trainer: Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
