"""The features of a fixed backbone, for :class:`zoo.callbacks.FeatureCache`: computed in one pass over a split,
held in memory or in a memory-mapped file, served as a dataset, and keyed by fingerprints of the backbone and
the data they came from."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import Dataset, Subset

from datamodules.in_memory import StackedBatch, collate
from zoo.compat import tensor_version
from zoo.tasks.base import CACHED_FEATURES


class CachedFeatures(Dataset):
    """The backbone's features and the targets of a split's samples, index for index; a batch is read at once."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.targets[i]

    def __getitems__(self, indices: Sequence[int]) -> StackedBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return StackedBatch(self.features[index], self.targets[index])


def collate_features(batch: Any) -> list[Any]:
    """``[{CACHED_FEATURES: (B, num_features)}, targets]``: the task's head takes the features as they are."""
    features, targets = collate(batch)
    return [{CACHED_FEATURES: features}, targets]


@torch.no_grad()
def compute_features(
    trainer: Trainer,
    pl_module: LightningModule,
    dataset: Dataset,
    loader_of: Callable[[Dataset, torch.Generator], Iterable[Any]],
    allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's features and target, in dataset order: the backbone in eval mode, in the run's precision,
    the global random generators left as they were. Under DDP each process computes every ``world``-th sample
    and gathers the others', so each gets the whole table.

    Args:
        loader_of: ``loader_of(subset, generator)``, a loader reading that subset in order as the split's own
            loader would (collate, workers).
        allocate: ``allocate(shape, dtype)``, an uninitialised table for the features.
    """
    n, world, rank = len(dataset), trainer.world_size, trainer.global_rank
    share = math.ceil(n / world)
    mine = [min(rank + world * k, n - 1) for k in range(share)]  # padded with a repeat, dropped when gathered
    loader = loader_of(Subset(dataset, mine), torch.Generator())  # its seed is drawn from its own generator
    features: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    done = 0
    precision = trainer.precision_plugin
    with _eval_mode(pl_module.backbone), _rng_untouched(pl_module.device), precision.forward_context():
        for batch in loader:
            x, y = precision.convert_input(batch[0]), batch[1]
            x, y = pl_module.transfer_batch_to_device((x, y), pl_module.device, 0)
            f, y = pl_module.features(x).detach(), y.detach()
            positions = torch.arange(done, done + len(y))
            rows = (rank + world * positions)[None]  # (1, b): the dataset indices of this batch's samples
            if world > 1:
                f, y = trainer.strategy.all_gather(f), trainer.strategy.all_gather(y)  # (world, b, ...)
                rows = torch.arange(world)[:, None] + world * positions[None]
            else:
                f, y = f[None], y[None]
            if features is None or targets is None:
                features = allocate((n, *f.shape[2:]), f.dtype)
                targets = torch.empty((n, *y.shape[2:]), dtype=y.dtype)
            keep = rows < n
            features[rows[keep]] = f.cpu()[keep]
            targets[rows[keep]] = y.cpu()[keep]
            done += len(positions)
    if features is None or targets is None:
        raise RuntimeError("FeatureCache: the split has no samples")
    return features, targets


def allocate_table(shape: tuple[int, ...], dtype: torch.dtype, directory: Optional[str]) -> torch.Tensor:
    """An uninitialised table: in memory (``directory`` None), or in a memory-mapped file in ``directory``,
    unlinked as soon as it is mapped, so that its space is freed with the table, even by a killed run."""
    if directory is None:
        return torch.empty(shape, dtype=dtype)
    os.makedirs(directory, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="zoo-features-", suffix=".bin", dir=directory)
    os.close(handle)
    try:
        return torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
    finally:
        os.unlink(path)


def table_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """The size of a table of ``shape`` and ``dtype``."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """The module in eval mode for the block, each of its submodules' own mode back afterwards."""
    modes = {m: m.training for m in module.modules()}
    for submodule in modes:
        submodule.training = False
    try:
        yield
    finally:
        for submodule, mode in modes.items():
            submodule.training = mode


def _rng_untouched(device: torch.device) -> Any:
    """The global generators (the CPU's, and the device's) as they were before the block, whatever it draws."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def backbone_fingerprint(backbone: nn.Module, memo: Optional[dict[str, Any]] = None) -> str:
    """A hash of every parameter and buffer of the backbone (names, shapes, dtypes and bytes).

    Hashing MiniLM's 90 MB takes ~0.1 s, as long as a cached epoch of it: ``memo`` (one per backbone) keeps the
    hash with the tensors' identities, storages and version counters (which every in-place change bumps, an
    optimizer's step or ``load_state_dict`` included), and it is taken again only when one of those moved. An
    edit through ``.data`` bypasses the version counter and is not seen.
    """
    tensors = [*backbone.named_parameters(), *backbone.named_buffers()]
    versions = tuple((name, id(t), t.data_ptr(), tensor_version(t)) for name, t in tensors)
    if memo is not None and memo.get("versions") == versions:
        return str(memo["hash"])
    digest = hashlib.sha1(usedforsecurity=False)
    for name, tensor in tensors:
        data = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    if memo is not None:
        memo.update(versions=versions, hash=digest.hexdigest())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> tuple[Any, ...]:
    """What identifies a dataset's samples cheaply: its length, and, through the datasets it wraps, each one's
    identity, the identity, storage and version of every tensor it holds (an in-place edit bumps the version),
    and the identity of its other attributes (a replaced transform, tokenizer or file list)."""
    parts: list[Any] = [len(dataset)]
    for owner in _datasets_in(dataset):
        parts.append((type(owner).__name__, id(owner)))
        for name, value in sorted(vars(owner).items(), key=lambda item: item[0]) if hasattr(owner, "__dict__") else []:
            tensors = [value] if isinstance(value, torch.Tensor) else _few_tensors(value)
            if tensors:
                parts.append((name, *((id(t), t.data_ptr(), tensor_version(t), tuple(t.shape)) for t in tensors)))
            elif not isinstance(value, Dataset):
                parts.append((name, id(value), len(value) if isinstance(value, (list, tuple, dict)) else None))
    return tuple(parts)


def _datasets_in(dataset: Any, depth: int = 0) -> Iterator[Any]:
    """The dataset and those it wraps (a Subset's, a ConcatDataset's, an augmenting wrapper's), depth first."""
    yield dataset
    if depth > 8 or not hasattr(dataset, "__dict__"):
        return
    for value in vars(dataset).values():
        inner = value if isinstance(value, (list, tuple)) else [value]
        for item in inner[:16]:
            if isinstance(item, Dataset):
                yield from _datasets_in(item, depth + 1)


def _few_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a short tuple or list of them (a TensorDataset's), else []."""
    if isinstance(value, (list, tuple)) and 0 < len(value) <= 16 and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    return []
