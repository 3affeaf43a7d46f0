"""A callback that notes when ``zoo fit`` starts fitting and takes its first training step (for the start-up
benchmark): ``--trainer.callbacks+=benchmarks.clock.FirstStepClock`` with ``ZOO_BENCH_CLOCK=<file>`` set."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from lightning.pytorch import Callback


class FirstStepClock(Callback):
    """Writes ``{"fit_start": t, "first_step": t}`` (``time.time()``) to ``$ZOO_BENCH_CLOCK``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.times["fit_start"] = time.time()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if "first_step" not in self.times:
            self.times["first_step"] = time.time()
            path = os.environ.get("ZOO_BENCH_CLOCK")
            if path:
                with open(path, "w") as f:
                    json.dump(self.times, f)
