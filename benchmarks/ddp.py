"""DDP on the CPU: the digits CNN recipe in 2 processes (1 thread each, gloo) against 1 process (2 threads), on the
same global batch (64: 32 per process under DDP); training samples per second, ratio reported (no target).

Measured for the zoo (the task under Lightning's ``ddp`` strategy; Lightning starts the second process) and for
its plain twin (``torch.nn.parallel.DistributedDataParallel`` with a ``DistributedSampler``, processes started
by ``torch.multiprocessing``, on in-memory data of the digits' shape), so a slow-down can be told apart from the
zoo's own cost. Each configuration
runs in a fresh ``python -m benchmarks.ddp --child SIDE DEVICES EPOCHS``; runs alternate. The first epoch
(process-group set-up, first kernels) is left out, and validation is off.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from typing import Any

from benchmarks.common import CORES, Figure, ratio, run_python

NAME = "ddp"
SIZES = {
    "full": {"epochs": 6, "repeats": 2},
    "short": {"epochs": 4, "repeats": 1},
    "tiny": {"epochs": 2, "repeats": 1},
}
GLOBAL_BATCH = 64
DIGITS_TRAIN = 1257  # samples in the digits recipe's training split
RECIPE = "configs/experiments/digits_cnn.yaml"


def zoo_child(devices: int, epochs: int) -> None:
    """Train in this process (and, for 2 devices, the one Lightning starts); rank 0 prints the result."""
    import torch
    from lightning.pytorch import Callback

    from benchmarks.twins import quiet, recipe, zoo_classifier, zoo_trainer
    from datamodules import Digits

    torch.set_num_threads(max(1, CORES // devices))

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.start: float = 0.0
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    clock = EpochClock()
    dm = Digits(batch_size=GLOBAL_BATCH // devices, seed=42)
    task = zoo_classifier(recipe(RECIPE), dm.input_shape, dm.num_classes)  # type: ignore[arg-type]
    strategy = {"strategy": "ddp", "devices": devices} if devices > 1 else {}
    trainer = zoo_trainer(max_epochs=epochs, limit_val_batches=0, callbacks=[clock], **strategy)
    with quiet():
        trainer.fit(task, datamodule=dm)
    for proc in getattr(trainer.strategy.launcher, "procs", []):  # rank 0 waits for the process it started,
        proc.wait()  # so that its CPU time counts as this benchmark's, not as another process's load
    if trainer.global_rank == 0:
        _report(clock.seconds, len(dm.train_set), trainer.world_size)  # type: ignore[arg-type]


def _report(epoch_seconds: list[float], samples_per_epoch: int, world_size: int) -> None:
    # The median epoch after the first: plain DDP has one slow epoch early on (~3x), which would swamp a mean.
    median = statistics.median(epoch_seconds[1:])
    print(
        json.dumps(
            {"samples_per_s": samples_per_epoch / median, "epoch_seconds": epoch_seconds, "world_size": world_size}
        ),
        flush=True,
    )


def _plain_worker(rank: int, devices: int, epochs: int, port: int) -> None:
    """One process of the plain twin: the recipe's network, DDP over gloo when ``devices > 1``."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from benchmarks.twins import plain_twin, recipe, synthetic_classification

    torch.set_num_threads(max(1, CORES // devices))
    # In-memory data of the digits' training split's size and shape (this process imports no Lightning).
    shape, classes = (1, 8, 8), 10
    data = synthetic_classification(DIGITS_TRAIN, shape, classes, seed=0)
    torch.manual_seed(0)
    net, optimizer, loss_fn = plain_twin(recipe(RECIPE), shape, classes)
    sampler = None
    if devices > 1:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group("gloo", rank=rank, world_size=devices)
        net = torch.nn.parallel.DistributedDataParallel(net)
        sampler = DistributedSampler(data, num_replicas=devices, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // devices, shuffle=sampler is None, sampler=sampler)
    seconds = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    if devices > 1:
        dist.destroy_process_group()
    if rank == 0:
        _report(seconds, len(data), devices)


def plain_child(devices: int, epochs: int) -> None:
    if devices == 1:
        _plain_worker(0, 1, epochs, 0)
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_plain_worker, args=(devices, epochs, port), nprocs=devices)


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    runs: dict[str, list[dict[str, Any]]] = {f"{side} {d}": [] for side in ("zoo", "plain") for d in (1, 2)}
    for _ in range(size["repeats"]):
        for key in runs:
            side, devices = key.split()
            result = run_python(["-m", "benchmarks.ddp", "--child", side, devices, str(size["epochs"])])
            if result["world_size"] != int(devices):
                raise RuntimeError(f"{side}: asked for {devices} processes, ran {result['world_size']}")
            runs[key].append(result)
    fastest = {k: max(v, key=lambda r: r["samples_per_s"])["samples_per_s"] for k, v in runs.items()}
    all_runs = {k: [round(r["samples_per_s"], 1) for r in v] for k, v in runs.items()}
    sides = ("2 x 1 thread, gloo", "1 x 2 threads")
    return [
        ratio(
            "digits CNN, zoo: 2 processes / 1 process, training samples/s (global batch 64)",
            fastest["zoo 2"],
            fastest["zoo 1"],
            "samples/s",
            sides=sides,
            runs=all_runs,
        ),
        ratio(
            "digits CNN, plain PyTorch DDP: 2 processes / 1 process",
            fastest["plain 2"],
            fastest["plain 1"],
            "samples/s",
            sides=sides,
            runs=all_runs,
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "DEVICES", "EPOCHS"), required=True)
    side, devices, epochs = parser.parse_args().child
    (zoo_child if side == "zoo" else plain_child)(int(devices), int(epochs))
