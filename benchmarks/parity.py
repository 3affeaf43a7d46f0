"""Parity on real models, two threads.

1. Lightning's LSTM parity protocol (``tests/parity_pytorch`` in Lightning's repository: ``ParityModuleRNN``
   on ``AverageDataset``, 4 epochs, 3 runs of which the first is a one-epoch warm-up and dropped; passes when
   ``mean(lightning) - mean(plain)`` over the kept runs is below 0.05 s per epoch and the last losses agree to
   5 decimals). Run twice: with Lightning's own module under the zoo's Trainer (what Lightning 2.6.6 costs on
   this machine), and with the zoo's ``Regressor`` on the registry's ``lstm`` backbone on the same data (what
   the zoo costs). Runs are interleaved (zoo, plain, zoo, plain, ...), not one side after the other.
2. Throughput of the digits CNN recipe (``configs/experiments/digits_cnn.yaml`` on the digits data) and of the
   registry's ResNet-18 (``configs/model/resnet18.yaml``) on CIFAR-shaped images: training samples per second
   under the bare Trainer against the plain loop, best run of each; target >= 0.95x. Both sides are timed over
   their training loop; the zoo's one-off set-up inside ``fit`` (strategy, optimizers, loaders: ~10 ms, 5-15 %
   of a short run of the digits CNN) is reported beside the ratio, and in the start-up benchmark.
"""

from __future__ import annotations

from statistics import mean
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import Figure, Stopwatch, best, interleave, ratio, set_threads
from benchmarks.overhead import LOSS_DECIMALS, loss_difference
from benchmarks.twins import fit_plain, fit_zoo, loader, plain_twin, quiet, recipe, zoo_classifier, zoo_trainer

NAME = "parity"
THREADS = 2
SIZES = {
    "full": {"lstm_runs": 3, "lstm_epochs": 4, "cnn_epochs": 10, "resnet_steps": 8, "repeats": 3, "resnet": True},
    "short": {"lstm_runs": 2, "lstm_epochs": 2, "cnn_epochs": 3, "resnet_steps": 2, "repeats": 2, "resnet": False},
    "tiny": {"lstm_runs": 2, "lstm_epochs": 1, "cnn_epochs": 1, "resnet_steps": 1, "repeats": 1, "resnet": False},
}
MAX_DIFF_PER_EPOCH = 0.05  # seconds: Lightning's threshold for ParityModuleRNN
CNN_RECIPE = "configs/experiments/digits_cnn.yaml"
RESNET_RECIPE = "configs/model/resnet18.yaml"
RESNET_BATCH = 32  # the CIFAR recipe's 128 would make a step ~2 s on two cores; the ratio does not depend on it


# --- Lightning's protocol -----------------------------------------------------------------------------------
class AverageDataset(Dataset):
    """Lightning's ``tests_pytorch.helpers.datasets.AverageDataset``: 300 random sequences of 100 steps, 10
    channels; the target at each step is the sum of the two halves of the channels, one rolled."""

    def __init__(self, dataset_len: int = 300, sequence_len: int = 100) -> None:
        self.input_seq = torch.randn(dataset_len, sequence_len, 10)
        top, bottom = self.input_seq.chunk(2, -1)
        self.output_seq = top + bottom.roll(shifts=1, dims=-1)

    def __len__(self) -> int:
        return len(self.input_seq)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_seq[item], self.output_seq[item]


def _parity_rnn_class() -> type:
    from lightning.pytorch import LightningModule

    class ParityModuleRNN(LightningModule):
        """Lightning's ``tests_pytorch.helpers.advanced_models.ParityModuleRNN``, as written there."""

        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(10, 20, batch_first=True)
            self.linear_out = nn.Linear(in_features=20, out_features=5)
            self.example_input_array = torch.rand(2, 3, 10)
            self._loss: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq, _ = self.rnn(x)
            return self.linear_out(seq)

        def training_step(self, batch: Any, batch_nb: int) -> dict[str, torch.Tensor]:
            x, y = batch
            loss = F.mse_loss(self(x), y)
            self._loss.append(loss.item())
            return {"loss": loss}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.02)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(AverageDataset(), batch_size=30)

    return ParityModuleRNN


def _seed(idx: int) -> None:
    from lightning.pytorch import seed_everything

    with quiet():
        seed_everything(idx)


def lightning_loop(idx: int, num_epochs: int) -> dict[str, Any]:
    """Lightning's ``lightning_loop``: seed, build the module and the Trainer, fit; timed as a whole."""
    from lightning.pytorch import Trainer

    with Stopwatch() as sw:
        _seed(idx)
        model = _parity_rnn_class()()
        with quiet():
            trainer = Trainer(
                max_epochs=num_epochs if idx > 0 else 1,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                accelerator="cpu",
                devices=1,
                logger=False,
                use_distributed_sampler=False,
                benchmark=False,
            )
            trainer.fit(model)
    return {"seconds": sw.seconds, "loss": model._loss[-1]}


def vanilla_loop(idx: int, num_epochs: int) -> dict[str, Any]:
    """Lightning's ``vanilla_loop`` (the module used as a plain nn.Module with its own loop)."""
    with Stopwatch() as sw:
        _seed(idx)
        model = _parity_rnn_class()()
        dl = model.train_dataloader()
        optimizer = model.configure_optimizers()
        for _ in range(num_epochs if idx > 0 else 1):
            for j, batch in enumerate(dl):
                loss = model.training_step(batch, j)["loss"]
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    return {"seconds": sw.seconds, "loss": loss.item()}


class LastStep(Dataset):
    """AverageDataset for a sequence-to-vector model: the target is the last step's (5 values)."""

    def __init__(self) -> None:
        self.data = AverageDataset()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[item]
        return x, y[-1]


def zoo_lstm_loop(idx: int, num_epochs: int) -> dict[str, Any]:
    """The protocol with the zoo: ``Regressor`` on the registry's ``lstm`` (hidden 20), MSE, Adam(lr=0.02)."""
    from functools import partial

    from zoo.tasks import Regressor

    with Stopwatch() as sw:
        _seed(idx)
        task = Regressor(
            backbone="lstm",
            backbone_kwargs={"hidden_size": 20},
            num_targets=5,
            input_shape=(100, 10),
            optimizer=partial(torch.optim.Adam, lr=0.02),
        )
        data = DataLoader(LastStep(), batch_size=30)
        result = fit_zoo(task, zoo_trainer(max_epochs=num_epochs if idx > 0 else 1), data)
    return {"seconds": sw.seconds, "loss": result["train_loss"]}


def plain_lstm_loop(idx: int, num_epochs: int) -> dict[str, Any]:
    """The plain twin of :func:`zoo_lstm_loop`: the same backbone and head in a hand-written loop."""
    from benchmarks.twins import PlainNet
    from zoo.heads import RegressionHead
    from zoo.registry import create_backbone

    with Stopwatch() as sw:
        _seed(idx)
        body = create_backbone("lstm", input_shape=(100, 10), hidden_size=20)
        net = PlainNet(body, RegressionHead(body.num_features, 5))
        data = DataLoader(LastStep(), batch_size=30)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        result = fit_plain(net, optimizer, data, num_epochs if idx > 0 else 1, loss_fn=F.mse_loss)
    return {"seconds": sw.seconds, "loss": result["train_loss"]}


def protocol(name: str, zoo_loop: Any, plain_loop: Any, num_runs: int, num_epochs: int) -> list[Figure]:
    """Lightning's protocol, interleaved: run ``i`` of each side with seed ``i``; run 0 (one epoch) dropped."""
    set_threads(THREADS)
    zoo, plain = [], []
    for idx in range(num_runs):
        zoo.append(zoo_loop(idx, num_epochs))
        plain.append(plain_loop(idx, num_epochs))
    kept_zoo, kept_plain = [r["seconds"] for r in zoo[1:]], [r["seconds"] for r in plain[1:]]
    per_epoch = Figure(
        f"{name}: (mean zoo - mean plain) per epoch",
        (mean(kept_zoo) - mean(kept_plain)) / num_epochs,
        "s",
        at_most=MAX_DIFF_PER_EPOCH,
        zoo=mean(kept_zoo),
        plain=mean(kept_plain),
        side_unit="s/run",
        details={
            "epochs": num_epochs,
            "zoo_runs": kept_zoo,
            "plain_runs": kept_plain,
            "best_difference_per_epoch": (min(kept_zoo) - min(kept_plain)) / num_epochs,
        },
    )
    losses = loss_difference(
        f"{name}: last loss, difference zoo vs plain", [r["loss"] for r in zoo], [r["loss"] for r in plain]
    )
    return [per_epoch, losses]


# --- throughput ---------------------------------------------------------------------------------------------
def digits_data() -> tuple[Dataset, tuple[int, ...], int]:
    """The digits recipe's training split, in memory, as the zoo's datamodule builds it."""
    from datamodules import Digits

    dm = Digits(seed=42)
    dm.setup("fit")
    return dm.train_set, dm.input_shape, dm.num_classes  # type: ignore[return-value]


def cifar_shaped(n: int, seed: int = 0) -> Dataset:
    """``n`` random CIFAR-shaped uint8 images, normalised on read by the zoo's CIFAR dataset class."""
    from datamodules.torchvision_sets import CIFAR10, UInt8Images

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return UInt8Images(images, labels, CIFAR10.mean, CIFAR10.std)


def training_loop(result: dict[str, Any]) -> dict[str, Any]:
    """A :func:`fit_zoo` result timed as its training loop (what the plain loop's time covers); the whole
    ``fit`` (with the set-up of the strategy, optimizers and loaders, once per run) kept as ``fit_seconds``."""
    return {**result, "seconds": result["loop_seconds"], "fit_seconds": result["seconds"]}


def zoo_side(
    spec: dict[str, Any],
    data: Dataset,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    epochs: int,
    precision: str = "32-true",
    **task: Any,
) -> Callable[[], dict[str, Any]]:
    """One timed run of a recipe's Classifier under the bare Trainer (other task arguments in ``task``)."""

    def side() -> dict[str, Any]:
        torch.manual_seed(0)
        model = zoo_classifier(spec, input_shape, num_classes, **task)
        trainer = zoo_trainer(max_epochs=epochs, precision=precision)
        result = fit_zoo(model, trainer, loader(data, batch_size, True, 0))
        return {**training_loop(result), "channels_last": model.channels_last}

    return side


def plain_side(
    spec: dict[str, Any], data: Dataset, input_shape: tuple[int, ...], num_classes: int, batch_size: int, epochs: int
) -> Callable[[], dict[str, Any]]:
    """One timed run of the recipe's plain twin, on the same data in the same order."""

    def side() -> dict[str, Any]:
        torch.manual_seed(0)
        net, optimizer, loss_fn = plain_twin(spec, input_shape, num_classes)
        return fit_plain(net, optimizer, loader(data, batch_size, True, 0), epochs, loss_fn=loss_fn)

    return side


def throughput(
    name: str,
    spec: dict[str, Any],
    data: Dataset,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    epochs: int,
    repeats: int,
    warmup: bool = True,
) -> list[Figure]:
    """Training samples per second in the training loop, zoo (bare Trainer) against plain, interleaved; best run
    of each. The zoo's one-off ``fit`` set-up (~10 ms) is reported beside it, not counted."""
    args = (spec, data, input_shape, num_classes, batch_size, epochs)
    zoo, plain = zoo_side(*args), plain_side(*args)
    runs = interleave({"zoo": zoo, "plain": plain}, repeats=repeats, threads=THREADS, warmup=warmup)
    z, p = best(runs["zoo"]), best(runs["plain"])
    samples = epochs * len(data)  # type: ignore[arg-type]
    return [
        ratio(
            f"{name}: throughput zoo / plain",
            samples / z["seconds"],
            samples / p["seconds"],
            "samples/s",
            at_least=0.95,
            steps=z["steps"],
            zoo_fit_setup_seconds=z["fit_seconds"] - z["seconds"],
            runs={k: [r["seconds"] for r in v] for k, v in runs.items()},
        ),
        # The zoo runs convolutional models in channels_last, the plain loop contiguous: other kernels, other
        # rounding, which training amplifies over epochs; the difference is reported, not held to 5 decimals.
        loss_difference(
            f"{name}: last epoch's train loss, difference zoo vs plain",
            [z["train_loss"]],
            [p["train_loss"]],
            decimals=None if z["channels_last"] else LOSS_DECIMALS,
        ),
    ]


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    figures = protocol(
        "LSTM parity, Lightning's module", lightning_loop, vanilla_loop, size["lstm_runs"], size["lstm_epochs"]
    )
    figures += protocol(
        "LSTM parity, zoo Regressor(lstm)", zoo_lstm_loop, plain_lstm_loop, size["lstm_runs"], size["lstm_epochs"]
    )
    cnn = recipe(CNN_RECIPE)
    data, shape, classes = digits_data()
    figures += throughput(
        "digits CNN",
        cnn,
        data,
        shape,
        classes,
        cnn["batch_size"],
        size["cnn_epochs"],
        size["repeats"],
        warmup=mode != "tiny",
    )
    if size["resnet"]:
        images = cifar_shaped(RESNET_BATCH * size["resnet_steps"])
        figures += throughput(
            "ResNet-18, 3x32x32", recipe(RESNET_RECIPE), images, (3, 32, 32), 10, RESNET_BATCH, 1, size["repeats"]
        )
    return figures
