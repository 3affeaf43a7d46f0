"""Data loading: each datamodule's default loader against the alternatives, and against what its model eats.

For each recipe's training data, samples per second of iterating the training loader (best epoch of several,
after one warm-up epoch, so persistent workers are running) with:

- default: ``datamodule.train_dataloader()`` as the recipe configures it (``num_workers: 0`` unless it says),
  followed by the datamodule's ``batch_augment`` where it has one (the augmentation of in-memory images that
  training runs per batch on the device, in ``on_after_batch_transfer``);
- 1 and 2 workers: the same datamodule with ``num_workers`` set (the zoo's loaders keep workers alive);
- batched: the whole batch read from the in-memory tensors at once and augmented with vectorised operations
  (:mod:`benchmarks.batched`), where the data is tensors in memory.

Targets: the default reaches >= 0.95x of the best of these, and >= 5x the model's consumption (training
samples per second of the recipe's network on one prepared batch, plain loop, two threads).

Then image files at real sizes (:mod:`benchmarks.image_folder`): ``ImageFolder`` on generated JPEGs at 224x224
against plain loaders (PIL or torchvision decoding, PIL or torch resizing, draft decoding, a resized cache).
"""

from __future__ import annotations

import gc
import tempfile
from typing import Any, Callable, Optional

import torch

from benchmarks import image_folder
from benchmarks.batched import BatchedView, batched_loader, compose, crop_flip, normalise, rotate_resized_crop
from benchmarks.common import Figure, Stopwatch, ratio, set_threads
from benchmarks.twins import datamodule, plain_twin, recipe

NAME = "dataloading"
THREADS = 2
SIZES = {
    "full": {
        "cases": (
            "digits",
            "digits augmented",
            "breast_cancer",
            "JapaneseVowels",
            "CIFAR-10 shaped",
            "CIFAR-10 shaped augmented",
        ),
        "epochs": 3,
        "model_steps": 5,
    },
    "short": {"cases": ("digits", "digits augmented", "breast_cancer"), "epochs": 2, "model_steps": 3},
    "tiny": {"cases": ("digits",), "epochs": 1, "model_steps": 1},
}
CIFAR_SAMPLES = 4096  # random CIFAR-shaped images (the real files are not on this machine)
RESNET_BATCH = 32  # the model's consumption is measured at this batch (the recipe's 128 takes ~1.3 s a step)
# case: (data config, model config)
CASES = {
    "digits": ("configs/experiments/digits_cnn.yaml", "configs/experiments/digits_cnn.yaml"),
    "digits augmented": ("configs/data/digits_augmented.yaml", "configs/experiments/digits_cnn.yaml"),
    "breast_cancer": ("configs/experiments/breast_cancer_mlp.yaml", "configs/experiments/breast_cancer_mlp.yaml"),
    "JapaneseVowels": ("configs/experiments/japanesevowels_lstm.yaml", "configs/experiments/japanesevowels_lstm.yaml"),
    "CIFAR-10 shaped": ("configs/data/cifar10.yaml", "configs/model/resnet18.yaml"),
    "CIFAR-10 shaped augmented": ("configs/data/cifar10_augmented.yaml", "configs/model/resnet18.yaml"),
}


def prepared(case: str) -> Any:
    """The case's datamodule, set up for fitting (CIFAR: its training set is random images of CIFAR's shape,
    built by the datamodule's own dataset class and augmentation)."""
    path = CASES[case][0]
    if not case.startswith("CIFAR"):
        dm = datamodule(path)
        dm.setup("fit")
        return dm
    from datamodules.torchvision_sets import UInt8Images

    dm = datamodule(path, data_dir=tempfile.gettempdir(), download=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CIFAR_SAMPLES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (CIFAR_SAMPLES,), generator=g)
    dm.train_set = UInt8Images(images, labels, dm.mean, dm.std, augment=dm.image_augment)
    return dm


def _augment_args(dm: Any, name: str) -> Optional[dict[str, Any]]:
    for spec in dm.augment:
        spec = {"name": spec} if isinstance(spec, str) else spec
        if spec["name"] == name:
            return spec
    return None


def batched_view(case: str, dm: Any) -> Optional[BatchedView]:
    """The batched candidate for a case, or None where the data is not tensors in memory (or its augmentation
    has no vectorised version here)."""
    names = {(a if isinstance(a, str) else a["name"]) for a in dm.augment}
    ds = dm.train_set
    if case in ("digits", "breast_cancer"):
        x, y = ds.tensors
        return BatchedView(x, y, None)
    if case == "digits augmented" and names == {"rotation", "random_resized_crop"}:
        rot = _augment_args(dm, "rotation") or {}
        crop = _augment_args(dm, "random_resized_crop") or {}
        transform = rotate_resized_crop(
            rot.get("degrees", 15.0), crop.get("scale", (0.08, 1.0)), crop.get("ratio", (3 / 4, 4 / 3))
        )
        mean, std = dm.stats["mean"] / 16.0, dm.stats["std"] / 16.0
        x, y = ds.tensors  # standardised: back to pixels / 16, in [0, 1]
        return BatchedView(x * std + mean, y, compose(transform, normalise([mean], [std], 1.0)))
    if case.startswith("CIFAR") and names <= {"random_crop", "hflip"} and (not names or len(names) == 2):
        steps = [crop_flip((_augment_args(dm, "random_crop") or {}).get("padding") or 4)] if names else []
        return BatchedView(ds.images, ds.labels, compose(*steps, normalise(dm.mean, dm.std, 255.0)))
    return None


def loader_rate(make: Callable[[], Any], epochs: int, then: Optional[Callable[[Any], Any]] = None) -> float:
    """Samples per second of the best of ``epochs`` passes over a loader, after one warm-up pass; ``then``
    transforms each batch's inputs, as training does after the loader (the per-batch augmentation)."""
    dl = make()
    best = float("inf")
    samples = 0
    for i in range(epochs + 1):
        samples = 0
        with Stopwatch() as sw:
            for x, y in dl:
                if then is not None:
                    x = then(x)
                samples += len(y)
        if i:
            best = min(best, sw.seconds)
    del dl
    gc.collect()  # stops persistent workers
    return samples / best


def consumption(case: str, dm: Any, steps: int) -> float:
    """Training samples per second of the case's recipe network on one prepared batch (plain loop)."""
    spec = recipe(CASES[case][1])
    x, y = next(iter(dm.train_dataloader()))
    if case.startswith("CIFAR"):
        x, y = x[:RESNET_BATCH], y[:RESNET_BATCH]
    torch.manual_seed(0)
    shape = dm.input_shape
    net, optimizer, loss_fn = plain_twin(spec, shape, dm.num_classes)
    best = float("inf")
    for i in range(steps + 1):
        with Stopwatch() as sw:
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if i:
            best = min(best, sw.seconds)
    return len(y) / best


def measure(case: str, epochs: int, model_steps: int) -> list[Figure]:
    set_threads(THREADS)
    dm = prepared(case)
    default_workers = dm.num_workers

    def with_workers(n: int) -> Callable[[], Any]:
        def make() -> Any:
            dm.num_workers = n
            try:
                return dm.train_dataloader()
            finally:
                dm.num_workers = default_workers

        return make

    augment = dm.batch_augment
    rates = {f"default ({default_workers} workers)": loader_rate(dm.train_dataloader, epochs, augment)}
    for n in (0, 1, 2):
        if n != default_workers:
            rates[f"{n} worker{'s' if n != 1 else ''}"] = loader_rate(with_workers(n), epochs, augment)
    view = batched_view(case, dm)
    if view is not None:
        rates["batched"] = loader_rate(lambda: batched_loader(view, dm.batch_size), epochs)
    default_name = next(iter(rates))
    best_name = max(rates, key=rates.__getitem__)
    model = consumption(case, dm, model_steps)
    rounded = {k: round(v, 1) for k, v in rates.items()}
    return [
        ratio(
            f"{case}: default loader / best loader",
            rates[default_name],
            rates[best_name],
            "samples/s",
            at_least=0.95,
            sides=(default_name, best_name),
            rates=rounded,
            batch_size=dm.batch_size,
        ),
        ratio(
            f"{case}: default loader / model consumption",
            rates[default_name],
            model,
            "samples/s",
            at_least=5.0,
            sides=("loader", "model"),
            model_config=CASES[case][1],
        ),
    ]


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    figures: list[Figure] = []
    for case in size["cases"]:
        figures += measure(case, size["epochs"], size["model_steps"])
    if mode != "tiny":  # JPEG files at 224x224 against plain loaders (benchmarks.image_folder)
        figures += image_folder.run(mode)
    return figures
