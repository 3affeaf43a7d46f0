"""Efficiency: the model FLOP/s the zoo reaches in training, as a fraction of what this CPU's matrix multiply
reaches in the same run, with two threads.

- Peak: the best of several products of two 1024x1024 float32 matrices (2 * 1024^3 FLOPs each), through
  ``torch.mm`` (MKL) and through oneDNN, whichever is faster: on AMD CPUs MKL runs its AVX2 code and reaches
  about half of what oneDNN's AVX-512 kernels (those the convolutions use) reach.
- Model FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` around one forward and backward pass of the
  network at the training batch size (matrix multiplies and convolutions; the optimizer is not counted).
- Efficiency: FLOPs per step x steps / the zoo's training-loop seconds (the bare Trainer, data loading
  included, ``fit``'s one-off set-up not) / peak. Targets: ResNet-18 on CIFAR-shaped images >= 0.70, the
  digits CNN >= 0.40.

The ceiling: the plain network's best bare training step (no data loading, no framework) over batch sizes and
both memory formats, against the same peak. It bounds what any loop can reach on a network: the digits CNN's
(0.29 at batch 256, channels_last, on this machine) lies below its 0.40 target.

Options, measured on the zoo side: the memory format (the default, ``auto``, trains convolutional image models
in ``channels_last``; ``contiguous`` is the other choice) and bf16 autocast (``Trainer(precision="bf16-mixed")``;
only where the CPU computes bf16 natively), each as a speed-up over the zoo's fp32 default. The zoo's default
must not be slower than plain fp32 (zoo / plain >= 0.95, the parity tolerance).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from benchmarks.common import Figure, Stopwatch, best, bf16_native, interleave, ratio, set_threads, single
from benchmarks.parity import CNN_RECIPE, RESNET_BATCH, RESNET_RECIPE, cifar_shaped, digits_data, plain_side, zoo_side
from benchmarks.twins import plain_twin, recipe
from zoo.compat import mkldnn_linear

NAME = "efficiency"
THREADS = 2
SIZES = {
    "full": {
        "cnn_epochs": 5,
        "resnet_steps": 6,
        "repeats": 3,
        "options": True,
        "resnet": True,
        "ceiling_batches": (64, 256, 1024),
    },
    "short": {
        "cnn_epochs": 2,
        "resnet_steps": 2,
        "repeats": 1,
        "options": False,
        "resnet": True,
        "ceiling_batches": (64, 256),
    },
    "tiny": {
        "cnn_epochs": 1,
        "resnet_steps": 1,
        "repeats": 1,
        "options": False,
        "resnet": False,
        "ceiling_batches": (8,),
    },
}
TARGETS = {"ResNet-18": 0.70, "digits CNN": 0.40}
MATMUL_N = 1024


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = MATMUL_N, repeats: int = 20) -> dict[str, float]:
    """FLOP/s of the best ``n x n`` matrix multiply in ``repeats`` (after two warm-up products), through each of
    PyTorch's CPU matmul libraries: ``torch.mm`` (MKL, which runs its AVX2 code on AMD CPUs) and oneDNN
    (``mkldnn_linear``, AVX-512 where the CPU has it). The peak is the better of the two."""
    set_threads(THREADS)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    products = {"torch.mm": lambda: torch.mm(a, b)}
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        am, bm = a.to_mkldnn(), b.to_mkldnn()
        products["onednn"] = lambda: mkldnn_linear(am, bm)
    out = {}
    for name, product in products.items():
        for _ in range(2):
            product()
        times = []
        for _ in range(repeats):
            with Stopwatch() as sw:
                product()
            times.append(sw.seconds)
        out[name] = 2 * n**3 / min(times)
    out["peak"] = max(out.values())
    return out


def flops_per_step(spec: dict[str, Any], shape: tuple[int, ...], classes: int, batch: int) -> int:
    """Model FLOPs of one training step (forward and backward) at batch size ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    net, _, loss_fn = plain_twin(spec, shape, classes)
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(x), y).backward()
    return int(counter.get_total_flops())


def ceiling(
    spec: dict[str, Any], shape: tuple[int, ...], classes: int, batches: tuple[int, ...], peak: float, steps: int = 15
) -> Figure:
    """What any loop reaches on this network: the plain network's best training step (forward, backward,
    optimizer; no data loading, no framework) over batch sizes and both memory formats, as a fraction of the
    peak. A target above it cannot be met by a training loop, the zoo's or a hand-written one."""
    set_threads(THREADS)
    found = {}
    for batch in batches:
        flops = flops_per_step(spec, shape, classes, batch)
        x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
        for memory_format in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            net, optimizer, loss_fn = plain_twin(spec, shape, classes)
            net, xb = net.to(memory_format=memory_format), x.contiguous(memory_format=memory_format)
            times = []
            for i in range(steps + 3):  # three warm-up steps
                with Stopwatch() as sw:
                    loss = loss_fn(net(xb), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                times.append(sw.seconds)
            found[f"batch {batch}, {str(memory_format).removeprefix('torch.')}"] = flops / min(times[3:]) / peak
    where = max(found, key=found.__getitem__)
    return single(
        f"{spec['name']}: best plain step over batch sizes and memory formats / matmul peak (ceiling)",
        found[where],
        "",
        at=where,
        efficiencies=found,
    )


def variants(
    spec: dict[str, Any], data: Any, shape: tuple[int, ...], classes: int, batch: int, epochs: int, options: bool
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The sides to interleave: plain fp32, the zoo's default, and the zoo with each option."""
    args = (spec, data, shape, classes, batch, epochs)

    def zoo(memory_format: str = "auto", precision: str = "32-true") -> Callable[[], dict[str, Any]]:
        return zoo_side(*args, precision=precision, memory_format=memory_format)

    sides = {"plain fp32": plain_side(*args), "zoo fp32": zoo()}
    if options:
        sides["zoo contiguous"] = zoo(memory_format="contiguous")
        if bf16_native():
            sides["zoo bf16-mixed"] = zoo(precision="bf16-mixed")
            sides["zoo contiguous + bf16-mixed"] = zoo(memory_format="contiguous", precision="bf16-mixed")
    return sides


def measure(
    name: str,
    spec: dict[str, Any],
    data: Any,
    shape: tuple[int, ...],
    classes: int,
    batch: int,
    epochs: int,
    repeats: int,
    options: bool,
    peak: float,
    warmup: bool,
) -> list[Figure]:
    flops = flops_per_step(spec, shape, classes, batch)
    runs = interleave(variants(spec, data, shape, classes, batch, epochs, options), repeats, THREADS, warmup)
    fastest = {k: best(v) for k, v in runs.items()}
    samples = epochs * len(data)
    zoo, plain = fastest["zoo fp32"], fastest["plain fp32"]
    steps = zoo["steps"]
    model_flops = flops * steps / zoo["seconds"]
    figures = [
        single(
            f"{name}: model FLOP/s / matmul peak (zoo, fp32)",
            model_flops / peak,
            "",
            at_least=TARGETS[name],
            model_gflops=model_flops / 1e9,
            peak_gflops=peak / 1e9,
            gflop_per_step=flops / 1e9,
            steps=steps,
            batch=batch,
            plain_efficiency=flops * plain["steps"] / plain["seconds"] / peak,
        ),
        ratio(
            f"{name}: zoo default (fp32) / plain fp32, samples/s",
            samples / zoo["seconds"],
            samples / plain["seconds"],
            "samples/s",
            at_least=0.95,
        ),
    ]
    for option in [k for k in fastest if k.startswith("zoo ") and k != "zoo fp32"]:
        figures.append(
            ratio(
                f"{name}: speed-up of {option.removeprefix('zoo ')} (zoo)",
                samples / fastest[option]["seconds"],
                samples / zoo["seconds"],
                "samples/s",
                sides=(option.removeprefix("zoo "), "fp32"),
            )
        )
    return figures


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    calibration = matmul_peak()
    peak = calibration["peak"]
    bf16 = matmul_peak(torch.bfloat16)["peak"] if bf16_native() else None
    figures = [
        single(
            "matmul peak, fp32, 2 threads (calibration)",
            peak / 1e9,
            "GFLOP/s",
            n=MATMUL_N,
            **{f"{k}_gflops": v / 1e9 for k, v in calibration.items()},
            bf16_gflops=bf16 / 1e9 if bf16 else None,
        )
    ]
    cnn = recipe(CNN_RECIPE)
    data, shape, classes = digits_data()
    figures += measure(
        "digits CNN",
        cnn,
        data,
        shape,
        classes,
        cnn["batch_size"],
        size["cnn_epochs"],
        size["repeats"],
        size["options"],
        peak,
        warmup=mode != "tiny",
    )
    figures.append(ceiling({**cnn, "name": "digits CNN"}, shape, classes, size["ceiling_batches"], peak))
    if size["resnet"]:
        images = cifar_shaped(RESNET_BATCH * size["resnet_steps"])
        figures += measure(
            "ResNet-18",
            recipe(RESNET_RECIPE),
            images,
            (3, 32, 32),
            10,
            RESNET_BATCH,
            1,
            size["repeats"],
            size["options"],
            peak,
            warmup=True,
        )
    return figures


__all__ = ["flops_per_step", "matmul_peak", "run"]
