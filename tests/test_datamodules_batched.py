"""Batched reads of in-memory datasets: a loader reading a whole batch at once (``__getitems__``) gives exactly the
batches that reading sample by sample and stacking gives, with workers, through a Subset and under DDP's sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from datamodules import MNIST, Digits, SklearnTabular, TimeSeries
from datamodules.in_memory import BatchedTensorDataset, StackedBatch, UInt8Images, collate
from datamodules.sequences import VariableLengthDataset, pad_collate
from tests.test_datamodules_images import write_mnist
from tests.test_datamodules_sequences import write_ts


class OneByOne(Dataset):
    """The same samples, read one ``__getitem__`` at a time: the per-sample path the batched one must match."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.dataset[i]


def assert_same_batches(ours, theirs) -> None:
    """Batch by batch: the same container types, and tensors equal in value, dtype and shape."""
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs) > 0

    def same(a, b) -> None:
        assert type(a) is type(b), (type(a), type(b))
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys()
            for key in a:
                same(a[key], b[key])
        else:
            assert len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)

    for a, b in zip(ours, theirs):
        same(a, b)


def _seeded(loader: DataLoader) -> list:
    torch.manual_seed(0)  # the shuffle's order
    return list(loader)


def _one_by_one(loader: DataLoader, collate_fn=default_collate) -> DataLoader:
    return DataLoader(OneByOne(loader.dataset), batch_size=loader.batch_size, shuffle=True, collate_fn=collate_fn)


@pytest.fixture(scope="module")
def digits() -> Digits:
    dm = Digits(batch_size=50)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MNIST:
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, "MNIST")
    dm = MNIST(data_dir=str(root), download=False, val_split=0.2, channels=3, image_size=20, batch_size=4)
    dm.setup()
    return dm


def test_in_memory_datasets_read_whole_batches(digits, mnist):
    tabular = SklearnTabular("diabetes", batch_size=32)
    tabular.setup()
    for dataset in (digits.train_set, tabular.train_set, mnist.train_set, mnist.test_set):
        batch = dataset.__getitems__([3, 1, 2])
        assert isinstance(batch, StackedBatch) and len(batch) == 3
        assert all(torch.equal(a, b) for a, b in zip(batch[1], dataset[1]))  # still a sequence of samples


@pytest.mark.parametrize("name", ["digits", "mnist", "diabetes"])
def test_batched_loaders_give_the_per_sample_batches(name, digits, mnist):
    if name == "diabetes":  # regression: float targets
        dm = SklearnTabular("diabetes", batch_size=32)
        dm.setup()
    else:
        dm = {"digits": digits, "mnist": mnist}[name]
    assert_same_batches(_seeded(dm.train_dataloader()), _seeded(_one_by_one(dm.train_dataloader())))
    for loader in (dm.val_dataloader(), dm.test_dataloader()):  # in order
        assert_same_batches(loader, DataLoader(OneByOne(loader.dataset), batch_size=loader.batch_size))


def test_uint8_images_read_at_once_are_the_images_read_one_by_one():
    images = torch.randint(0, 256, (40, 3, 10, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 7
    for channels, size in ((3, None), (1, None), (3, (17, 9)), (1, (6, 6))):
        dataset = UInt8Images(images, labels, [0.4] * channels, [0.2] * channels, channels, size)
        batch = dataset.__getitems__(list(range(39, -1, -3)))
        alone = default_collate([dataset[i] for i in range(39, -1, -3)])
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(collate(batch), alone))


def test_per_sample_augmentations_keep_their_random_draws_in_a_batched_read(tmp_path):
    write_mnist(tmp_path, "MNIST")
    dm = MNIST(data_dir=str(tmp_path), download=False, val_split=0.2, augment=["rand_augment", "hflip"])
    dm.setup()
    assert dm.image_augment.per_sample and dm.batch_augment is not None  # rand_augment per sample, hflip per batch
    torch.manual_seed(3)
    batch = collate(dm.train_set.__getitems__(list(range(12))))
    torch.manual_seed(3)
    alone = default_collate([dm.train_set[i] for i in range(12)])
    assert torch.equal(batch[0], alone[0]) and torch.equal(batch[1], alone[1])
    torch.manual_seed(4)
    assert not torch.equal(collate(dm.train_set.__getitems__(list(range(12))))[0], alone[0])  # it does draw


def test_worker_processes_give_the_same_batches(digits):
    digits.num_workers = 2
    try:
        with_workers = _seeded(digits.train_dataloader())
    finally:
        digits.num_workers = 0
    assert_same_batches(with_workers, _seeded(digits.train_dataloader()))
    assert_same_batches(with_workers, _seeded(_one_by_one(digits.train_dataloader())))


def test_subsets_read_through_to_the_batched_read(digits):
    subset = Subset(digits.train_set, list(range(0, 600, 3)))
    assert isinstance(subset.__getitems__([0, 5, 7]), StackedBatch)
    ours = DataLoader(subset, batch_size=16, shuffle=True, collate_fn=digits.collate_fn())
    theirs = DataLoader(OneByOne(subset), batch_size=16, shuffle=True)
    assert_same_batches(_seeded(ours), _seeded(theirs))


def test_ddp_sampler_gives_each_rank_its_per_sample_batches(digits):
    # What Lightning does under DDP: the same loader rebuilt with a DistributedSampler, collate kept.
    loader, seen = digits.train_dataloader(), []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ours = list(_update_dataloader(loader, sampler))
        theirs = DataLoader(OneByOne(loader.dataset), batch_size=loader.batch_size, sampler=sampler)
        assert_same_batches(ours, theirs)
        seen.append(torch.cat([x.flatten(1) for x, _ in ours]))
    everything = digits.train_set.tensors[0].flatten(1)
    assert len(torch.cat(seen).unique(dim=0)) == len(everything.unique(dim=0))  # the ranks share out every sample


def test_a_collate_that_does_not_know_stacked_batches_stacks_their_samples(digits):
    batch = digits.train_set.__getitems__([5, 0, 9])
    ours, theirs = collate(batch), default_collate(batch)
    assert isinstance(ours, list) and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert torch.equal(ours[1], digits.train_set.tensors[1][[5, 0, 9]])


# --- sequences ---------------------------------------------------------------------------------------------
def test_equal_length_series_are_read_at_once_and_need_no_padding(tmp_path):
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(12, 2)), "ab"[i % 2]) for i in range(38)]  # one length, as BasicMotions has
    files = write_ts(tmp_path / "Eq_TRAIN.ts", cases[:30]), write_ts(tmp_path / "Eq_TEST.ts", cases[30:])
    dm = TimeSeries(train_file=files[0], test_file=files[1], batch_size=8, val_split=0.2)
    dm.setup()
    assert dm.train_set.stacked is not None and isinstance(dm.train_set.__getitems__([0, 1]), StackedBatch)
    loader = dm.train_dataloader()
    assert_same_batches(_seeded(loader), _seeded(_one_by_one(loader, dm.collate_fn())))
    x, y = next(iter(loader))
    assert x["x"].shape == (8, 12, 2) and bool(x["mask"].all()) and y.dtype == torch.long


def test_series_of_different_lengths_are_read_one_by_one():
    dataset = VariableLengthDataset([torch.randn(n, 2) for n in (3, 5, 4)], torch.tensor([0, 1, 0]))
    assert dataset.stacked is None and isinstance(dataset.__getitems__([0, 2]), list)
    batch, _ = pad_collate(dataset.__getitems__([0, 1]))
    assert batch["x"].shape == (2, 5, 2) and batch["mask"].sum(1).tolist() == [3, 5]
    tokens = VariableLengthDataset([torch.arange(4) + i for i in range(3)], torch.tensor([1, 0, 1]))
    stacked = pad_collate(tokens.__getitems__([2, 0]))
    assert_same_batches([stacked], [pad_collate([tokens[2], tokens[0]])])
    assert isinstance(BatchedTensorDataset(torch.zeros(2, 1), torch.zeros(2)).__getitems__([1]), StackedBatch)
