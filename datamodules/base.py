"""The base datamodule: seeded splits, loaders, and the facts a model needs about the data.

Subclasses implement :meth:`ZooDataModule.build` (return the three datasets, having fitted any
normalisation on the training split) and the metadata properties the CLI links into the model:
``num_classes`` (classification) or ``num_targets`` / ``target_mean`` / ``target_std`` (regression),
and ``input_shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from datamodules.augment import AugmentSpec, BatchMix, check_mix
from datamodules.in_memory import collate
from zoo.errors import ConfigError, DataError


def labels_of(dataset: Optional[Dataset]) -> Optional[torch.Tensor]:
    """A dataset's integer labels without reading its inputs, where it keeps them apart (TensorDataset, a
    ``targets`` list, Subsets of those); None where only reading every sample would tell."""
    if dataset is None:
        return None
    if isinstance(dataset, Subset):
        labels = labels_of(dataset.dataset)
        return None if labels is None else labels[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    elif isinstance(getattr(dataset, "targets", None), (list, torch.Tensor, np.ndarray)):
        labels = torch.as_tensor(np.asarray(dataset.targets))
    else:
        return None
    return labels if labels.dim() == 1 and not labels.is_floating_point() else None


@dataclass
class BaselineData:
    """The data a cheap baseline learns from and is scored on (:func:`zoo.baselines.run_baselines`).

    The training part is the train and validation splits (all the model may learn from); the test part is the
    model's test split, in the order its test loader reads it. ``y`` are class indices (ints) for classification,
    ``(N, num_targets)`` floats in the targets' own units for regression.

    Attributes:
        kind: ``"table"`` (``x`` 2-D floats, NaN for missing, categorical columns as integer codes listed in
            ``categorical``), ``"series"`` (a list of ``(T_i, C)`` float arrays, lengths may differ), ``"text"``
            (a list of str) or ``"image"`` (``(N, ...)`` floats, the prepared, normalised images).
    """

    kind: str
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    categorical: Optional[list[int]] = None


BASELINE_CAP = 10_000  # training samples a baseline learns from at most, on the large sets


def capped(n: int, seed: int, cap: int = BASELINE_CAP, what: str = "baseline") -> np.ndarray:
    """Sorted indices of a seeded subsample of at most ``cap`` of ``n`` samples (all of them when ``n <= cap``);
    says so when it subsamples."""
    if n <= cap:
        return np.arange(n)
    rank_zero_info(f"{what}: learns from a seeded subsample of {cap:,} of the {n:,} training samples")
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def split_indices(
    n: int,
    val_split: float,
    test_split: float,
    seed: int,
    stratify: Optional[Union[Sequence[int], np.ndarray]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / val / test indices; stratified by label when ``stratify`` is given.

    ``val_split`` and ``test_split`` are fractions of the whole set; a zero fraction gives an empty split.
    """
    for name, frac in (("val_split", val_split), ("test_split", test_split)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"data.{name}={frac} must be a fraction in [0, 1)")
    if val_split + test_split >= 1.0:
        raise DataError(f"data.val_split + data.test_split = {val_split + test_split:.2f} leaves no training data")
    try:
        return _split(n, val_split, test_split, seed, stratify)
    except ValueError as err:  # sklearn's: too few samples of a class, or a split smaller than the classes
        raise DataError(
            f"cannot split {n} samples into val_split={val_split} / test_split={test_split}"
            f"{' stratified by label' if stratify is not None else ''}: {err}. Use more data or other fractions"
        ) from err


def _split(
    n: int, val_split: float, test_split: float, seed: int, stratify: Optional[Union[Sequence[int], np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # here: scikit-learn and pandas cost ~60 MiB and 0.2 s

    idx = np.arange(n)
    labels = np.asarray(stratify) if stratify is not None else None
    test = np.array([], dtype=int)
    if test_split > 0:
        idx, test = train_test_split(idx, test_size=test_split, random_state=seed, stratify=labels)
        labels = labels[idx] if labels is not None else None
    val = np.array([], dtype=int)
    if val_split > 0:
        idx, val = train_test_split(
            idx, test_size=val_split / (1.0 - test_split), random_state=seed + 1, stratify=labels
        )
    return np.sort(idx), np.sort(val), np.sort(test)


class ZooDataModule(LightningDataModule):
    """Common arguments and loaders of the zoo's datamodules.

    Args:
        data_dir: where dataset files are read from (and downloaded to, where a dataset downloads).
        batch_size: samples per training batch (evaluation uses the same).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        drop_last: drop the last, smaller training batch of each epoch (evaluation keeps every sample); for
            models whose batch statistics suffer from a tiny last batch (batch norm).
        val_split: fraction of the data held out for validation (where the data has no own split).
        test_split: fraction held out for testing (where the data has no own test split).
        seed: seeds the splits, so they are the same on every run and every process.
        num_classes: optional check: the number of classes you expect; the data must agree.
        augment: augmentations of the training split, by name (``[hflip, {name: rotation, degrees: 10}]``);
            the datamodules that offer it say which names they take (:mod:`datamodules.augment`). Each sample
            gets its own random parameters, drawn per sample or, for images in memory, per batch on the device
            (:attr:`batch_augment`). Validation, test and predict data are never augmented.
        mixup_alpha: MixUp of training batches, ``lam ~ Beta(alpha, alpha)``; 0 is off. Labels become class
            probabilities, so it needs a classification dataset and ``zoo.tasks.Classifier``.
        cutmix_alpha: CutMix of training batches (images only), ``lam ~ Beta(alpha, alpha)``; 0 is off. With
            both alphas set, each mixed batch is one or the other with even odds.
        mix_prob: probability that a training batch is mixed at all.
    """

    task: str = "classification"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_split: float = 0.1,
        test_split: float = 0.2,
        seed: int = 42,
        num_classes: Optional[int] = None,
        augment: Optional[list[AugmentSpec]] = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"data.batch_size={batch_size} must be at least 1")
        check_mix(mixup_alpha, cutmix_alpha, mix_prob)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        self.expected_num_classes = num_classes
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.augment = list(augment or [])
        self.mixup_alpha, self.cutmix_alpha, self.mix_prob = mixup_alpha, cutmix_alpha, mix_prob
        self.batch_mix: Optional[BatchMix] = None  # made in setup("fit"), once the classes and the task are known
        # Augmentation of whole training batches on their device (datamodules.augment_batch), set by the datamodules
        # whose data is in memory; it runs before MixUp / CutMix, as per-sample augmentation does.
        self.batch_augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._stand_ins: dict[str, tuple[Dataset, Optional[Callable[[Any], Any]]]] = {}  # see serve_instead

    # --- what subclasses provide ----------------------------------------------------------------
    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load the data and return ``(train, val, test)`` datasets of ``(input, target)`` pairs."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch dimension."""
        raise NotImplementedError

    def _num_classes(self) -> Optional[int]:
        """The number of classes found in the data (None for regression)."""
        return None

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names, index-aligned with the labels."""
        return [str(i) for i in range(self.num_classes or 0)]

    @property
    def vocab_size(self) -> Optional[int]:
        """Size of the token vocabulary (text data only)."""
        return None

    @property
    def categories(self) -> Optional[list[int]]:
        """Cardinality of each categorical input column, code 0 included (tabular data only; None: no such
        columns). The backbone embeds them (:class:`zoo.backbones.tabular.TabularMLPBackbone`)."""
        return None

    @property
    def num_targets(self) -> Optional[int]:
        """Number of regression targets (None for classification)."""
        return None

    @property
    def target_mean(self) -> Optional[list[float]]:
        return None

    @property
    def target_std(self) -> Optional[list[float]]:
        return None

    # --- shared behaviour -----------------------------------------------------------------------
    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes, checked against the ``num_classes`` the user gave, if any."""
        found = self._num_classes()
        expected = self.expected_num_classes
        if expected is not None and found is not None and expected != found:
            raise DataError(
                f"data.num_classes={expected} but {type(self).__name__} has {found} classes; "
                f"remove data.num_classes (it is read from the data) or fix the data"
            )
        if expected is not None and found is None:
            raise DataError(f"data.num_classes={expected} was given but {type(self).__name__} is a regression dataset")
        return found

    def setup(self, stage: Optional[str] = None) -> None:
        self._build_once()
        if stage in (None, "fit"):
            self._check_batches()
        if stage in (None, "fit") and (self.mixup_alpha or self.cutmix_alpha):
            self.batch_mix = self._batch_mix()

    def _build_once(self) -> None:
        if self.train_set is None:
            self.num_classes  # noqa: B018  (checks an explicit num_classes against the data first)
            train, val, test = self.build()
            if len(train) == 0:
                raise DataError(f"{type(self).__name__}: the training split is empty; check data_dir and the splits")
            self.train_set, self.val_set, self.test_set = train, val, test
            self._check_labels()

    def split_sizes(self) -> tuple[int, int]:
        """The number of training and validation samples (the data is read if it was not yet)."""
        self._build_once()  # sets train_set, which the checker cannot follow
        return len(self.train_set), len(self.val_set) if self.val_set is not None else 0  # type: ignore[arg-type]

    def join_validation(self) -> None:
        """The validation samples join the training split and validation is left empty: on small data a run
        trains on all of it for a fixed budget rather than select epochs on a few samples (:mod:`zoo.budget`).
        Statistics fitted on the training split (normalisation, vocabulary) stay as they are."""
        self._build_once()
        if self.val_set is not None and len(self.val_set):
            self.train_set = ConcatDataset([self.train_set, self.val_set])
            self.val_set = Subset(self.val_set, [])

    def _check_labels(self) -> None:
        """Class labels outside ``[0, num_classes)`` are named before training (they would crash the loss
        mid-epoch, or on a GPU trip a device-side assert)."""
        n = self.num_classes
        if n is None:
            return
        for split, dataset in (("training", self.train_set), ("validation", self.val_set), ("test", self.test_set)):
            labels = labels_of(dataset)
            if labels is None or labels.numel() == 0:
                continue
            bad = labels[(labels < 0) | (labels >= n)]
            if bad.numel():
                shown = sorted(set(bad.tolist()))[:5]
                raise DataError(
                    f"{type(self).__name__}: {bad.numel()} {split} labels fall outside 0..{n - 1} (e.g. {shown}); "
                    f"labels must be class indices from 0 to num_classes - 1 = {n - 1}: remap them, or check the files"
                )

    def _check_batches(self) -> None:
        """With ``drop_last``, a batch larger than a process's share of the training data drops every batch: Lightning
        would then run epochs of no step and call the run a success."""
        if not self.drop_last:
            return
        world, per_process = self._training_share()
        if self.batch_size > per_process:
            share = f"{per_process} per process ({world} processes)" if world > 1 else str(per_process)
            raise DataError(
                f"{type(self).__name__}: data.batch_size={self.batch_size} is larger than the training split "
                f"({share} samples), and data.drop_last=true drops that only, partial batch: no epoch would have a "
                f"training step. Set data.batch_size to at most {per_process}, or data.drop_last=false"
            )

    def _training_share(self) -> tuple[int, int]:
        """The number of processes, and the training samples each one reads an epoch (DistributedSampler pads
        the split to a multiple of the processes)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return world, math.ceil(len(self.train_set) / world)  # type: ignore[arg-type]  # called once it is built

    def _batch_mix(self) -> BatchMix:
        """MixUp / CutMix for this data and task; a ConfigError where labels cannot become class probabilities."""
        keys = [k for k in ("mixup_alpha", "cutmix_alpha") if getattr(self, k)]
        asked, remove = ", ".join(f"data.{k}={getattr(self, k)}" for k in keys), " and ".join(f"data.{k}" for k in keys)
        num_classes = self.num_classes
        if num_classes is None:
            raise ConfigError(
                f"{asked}: MixUp / CutMix mix class labels, but {type(self).__name__} is a regression dataset "
                f"(no classes); remove {remove}"
            )
        model = self.trainer.lightning_module if self.trainer is not None else None
        # A task says whether it learns from class probabilities (zoo.tasks.Classifier does); others would
        # silently misuse them (a regression loss on probabilities) or fail deep inside their loss.
        if model is not None and not getattr(model, "accepts_soft_targets", False):
            raise ConfigError(
                f"{asked}: MixUp / CutMix turn labels into class probabilities, which {type(model).__name__} "
                f"cannot learn from; use zoo.tasks.Classifier, or remove {remove}"
            )
        return BatchMix(num_classes, self.mixup_alpha, self.cutmix_alpha, self.mix_prob)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Batch-level augmentation and mixing happen here, on the device the batch now lives on, and only to
        # training batches (trainer.training is False in validation, sanity checks, test and predict; the model
        # summary sends the model's example_input_array through here too, a bare tensor).
        if self.trainer is None or not self.trainer.training or not isinstance(batch, (list, tuple)):
            return batch
        if self.batch_augment is not None:
            x, *rest = batch
            batch = [self.batch_augment(x), *rest]
        return self.batch_mix(batch) if self.batch_mix is not None else batch

    @property
    def augments_training(self) -> bool:
        """Whether training batches change from epoch to epoch: augmented per sample or per batch, or mixed."""
        return bool(self.augment) or self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.batch_augment is not None

    def serve_instead(
        self, split: str, dataset: Optional[Dataset], collate_fn: Optional[Callable[[Any], Any]] = None
    ) -> None:
        """Have the ``split`` loader (``train`` or ``val``) read ``dataset`` in place of the split's own samples, in
        the main process and collated by ``collate_fn``; None serves the split's own again. ``dataset`` stands for
        the same samples in the same order (its length is checked), so the loader's seeded shuffle, batches and
        dropped last batch stay those of the split: :class:`zoo.callbacks.FeatureCache` serves a frozen backbone's
        features this way. A running trainer asks for its loaders again only when told to."""
        if split not in ("train", "val"):
            raise ValueError(f"serve_instead: split={split!r} must be 'train' or 'val'")
        if dataset is None:
            self._stand_ins.pop(split, None)
            return
        own = self.train_set if split == "train" else self.val_set
        sizes = [len(d) if d is not None else 0 for d in (own, dataset)]
        if sizes[0] != sizes[1]:
            raise ValueError(f"serve_instead: the {split} split has {sizes[0]} samples, its stand-in {sizes[1]}")
        self._stand_ins[split] = (dataset, collate_fn)

    def collate_fn(self) -> Optional[Callable[[Any], Any]]:
        """How samples become a batch: PyTorch's default stacking, which passes through the batches that
        in-memory datasets read at once (:mod:`datamodules.in_memory`)."""
        return collate

    def _loader(
        self, dataset: Optional[Dataset], shuffle: bool, drop_last: bool = False, split: Optional[str] = None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError("datamodule.setup() must run before asking for a dataloader")
        workers, collate_fn = self.num_workers, self.collate_fn()
        if split in self._stand_ins:  # serve_instead: in memory, read in the main process
            (dataset, collate_fn), workers = self._stand_ins[split], 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        drop_last = self.drop_last or self._last_batch_of_one()
        return self._loader(self.train_set, shuffle=True, drop_last=drop_last, split="train")

    def _last_batch_of_one(self) -> bool:
        """Whether each epoch would end on a training batch of one sample, which batch norm cannot train on
        (PyTorch stops mid-epoch: "Expected more than 1 value per channel"); such a batch is dropped."""
        if self.train_set is None:
            return False  # _loader names the missing setup()
        per_process = self._training_share()[1]
        if per_process % self.batch_size != 1 or per_process == 1:
            return False
        rank_zero_info(
            f"{type(self).__name__}: {per_process} training samples per process make batches of "
            f"{self.batch_size} end on one of a single sample, which is dropped each epoch (batch norm cannot "
            f"train on one sample); another data.batch_size avoids it"
        )
        return True

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, split="val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def baseline_data(self) -> Optional[BaselineData]:
        """This data for the cheap baselines a test reports beside the model (:mod:`zoo.baselines`), after
        :meth:`setup`; None (the default) where the data gets no baseline."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: class names, and what new inputs need (statistics, vocabulary)."""
        return {"class_names": self.class_names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored_state = dict(state_dict)

    def predict_inputs(self, path: str) -> tuple[Dataset, list[str]]:
        """New inputs read from ``path`` and prepared the way the training data was, for `zoo predict`:
        a dataset of ``(input, dummy target)`` pairs and one name per sample (file name or row number)."""
        raise DataError(f"{type(self).__name__} cannot read new inputs for prediction (zoo predict)")


def fit_standardizer(x: torch.Tensor, dim: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x`` over ``dim`` (fitted on the training split only); std floored at 1e-8."""
    mean = x.mean(dim=tuple(dim), keepdim=True)
    std = x.std(dim=tuple(dim), keepdim=True).clamp_min(1e-8)
    return mean, std
