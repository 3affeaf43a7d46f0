"""The zoo and its plain-PyTorch twin on a device, for :mod:`benchmarks.gpu`: one fit each, with every step's
loss, the seconds of the steps after a warm-up (the clock read after ``torch.cuda.synchronize()``) and, for the zoo,
the layout its convolutions train in. :mod:`benchmarks.twins` builds both networks, as for the CPU benchmarks.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

RESNET_RECIPE = "configs/model/resnet18.yaml"
CLASSES = 10


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels, so a clock read after it counts them."""
    if device == "cuda":
        torch.cuda.synchronize()


class BatchPool(torch.utils.data.Dataset):
    """``length`` batches cycled from a few distinct ones held on the host (pinned where there is a GPU), so the
    loader costs both sides the same: one host-to-device copy per step. Read with ``batch_size=None``."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        pin = torch.cuda.is_available()
        self.batches = [(x.pin_memory(), y.pin_memory()) if pin else (x, y) for x, y in batches]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]


def random_batches(distinct: int, batch: int, shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images and labels (for timing: nothing to learn)."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, CLASSES, (batch,), generator=g))
        for _ in range(distinct)
    ]


def spec_for(optimizer: Optional[type] = None, **optimizer_kwargs: Any) -> dict[str, Any]:
    """The ResNet-18 recipe (:func:`benchmarks.twins.recipe`), optionally with another optimizer."""
    from benchmarks.twins import recipe

    spec = recipe(RESNET_RECIPE)
    if optimizer is not None:
        spec["optimizer"], spec["optimizer_kwargs"] = optimizer, optimizer_kwargs
    return spec


def zoo_run(
    spec: dict[str, Any], data: Any, shape: tuple[int, ...], device: str, precision: str, warmup: int, **task: Any
) -> dict[str, Any]:
    """One fit of the zoo's Classifier under the bare Trainer on one device: every step's loss, the seconds of the
    steps after ``warmup`` (synchronised), and the first convolution weight's layout and device in training."""
    from lightning.pytorch import Callback

    from benchmarks.twins import zoo_classifier, zoo_trainer

    class Steps(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.start = self.end = 0.0
            self.layout: dict[str, Any] = {}

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # Read here, on the device: after fit Lightning moves the model back to the CPU.
            conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d)).weight
            self.layout = {
                "channels_last": bool(conv.is_contiguous(memory_format=torch.channels_last)),
                "device": str(conv.device),
            }

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                synchronize(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.losses.append(float(outputs["loss"]) if batch_idx < warmup else outputs["loss"].detach())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            synchronize(device)
            self.end = time.perf_counter()

    torch.manual_seed(0)
    model = zoo_classifier(spec, shape, CLASSES, **task)
    steps = Steps()
    trainer = zoo_trainer(accelerator="gpu" if device == "cuda" else "cpu", precision=precision, callbacks=[steps])
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    return {"seconds": steps.end - steps.start, "losses": [float(v) for v in steps.losses], **steps.layout}


def plain_run(
    spec: dict[str, Any],
    data: Any,
    shape: tuple[int, ...],
    device: str,
    precision: str,
    warmup: int,
    channels_last: bool,
) -> dict[str, Any]:
    """The plain twin of :func:`zoo_run`: the same network, optimizer, seed and batches in a hand-written loop,
    with ``torch.autocast`` (and a GradScaler for ``16-mixed``) as Lightning's precision plugin uses them."""
    from benchmarks.twins import plain_twin

    torch.manual_seed(0)
    net, optimizer, loss_fn = plain_twin(spec, shape, CLASSES)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None
    losses, start = [], 0.0
    net.train()
    for i, (x, y) in enumerate(torch.utils.data.DataLoader(data, batch_size=None)):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()) if i < warmup else loss.detach())
    synchronize(device)
    return {"seconds": time.perf_counter() - start, "losses": [float(v) for v in losses]}
