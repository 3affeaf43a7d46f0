"""FeatureCache: a frozen backbone's features, computed once and served to the head in the epochs that follow.

In an epoch where the backbone is a fixed feature extractor (every layer group frozen and the whole backbone in
eval mode: ``finetuning.strategy: feature_extraction``, or the frozen epochs of the other schedules, see
:meth:`~zoo.callbacks.finetuning.FineTuning.extracts_features_at`), a sample's features depend on the sample
alone. Where the training samples are also the same every epoch (no augmentation, MixUp or CutMix), the callback
computes every training and validation sample's features in one pass and the datamodule serves them in place of
the samples (:meth:`datamodules.base.ZooDataModule.serve_instead`), with the same sampler: the same batches in
the same order. The head then trains on ``{CACHED_FEATURES: (B, num_features)}`` batches and nothing else runs,
no reading, decoding or collating of inputs and no backbone forward. Validation features are cached whenever
the backbone is fixed (validation data is never augmented).

What does not change: the model (the checkpoint holds the whole network, ``zoo test`` and ``zoo predict`` run it on
inputs, and nothing of the cache is saved: a resumed fit computes the features again) and the results (the pass
draws nothing from the random generators, so the head sees the same batches and dropout draws; the features
equal the uncached ones up to float rounding, which a different batch composition or padding can change).

The features are keyed by a hash of the backbone's weights and buffers and by each split's dataset (its
identity, length, and the identity and version of every tensor it holds, so replacing or editing one in place
counts; other attributes, such as transforms, by identity). Before each epoch the key is checked and the features
computed again where it changed; an epoch where the backbone trains (a schedule's unfreeze) or the training data
is augmented reads the inputs again, the loaders being switched between epochs.

Under DDP each process computes the features of its strided share of the samples and gathers the others', so each
holds the whole table and Lightning's distributed sampler shards it as it shards the samples.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.base import ZooDataModule
from zoo.callbacks.feature_store import (
    CachedFeatures,
    allocate_table,
    backbone_fingerprint,
    collate_features,
    compute_features,
    dataset_fingerprint,
    table_bytes,
)
from zoo.callbacks.finetuning import FineTuning
from zoo.compat import reload_fit_dataloaders
from zoo.errors import ConfigError, TrainingError

SPLITS = ("train", "val")
NAMES = {"train": "training", "val": "validation"}
MIN_READS = 2  # the cache pays when the epochs it serves read the split's samples at least this many times over
UNBOUNDED_EPOCHS = 1000  # a run without max_epochs is counted as this many


@dataclass
class _Entry:
    """One split's cached features and the key they were computed under."""

    data: CachedFeatures
    key: tuple[Any, ...]
    nbytes: int
    path: Optional[str]  # the directory of its memory-mapped file (unlinked at once), or None: in memory


class FeatureCache(Callback):
    """Compute a fixed backbone's features once and train the head on them (module docstring).

    Args:
        mode: ``auto``: cache where the backbone is fixed, the training data is not augmented and the epochs
            that use the features read each sample at least twice; ``on``: also where they read it less
            (a short or ``limit_train_batches`` run); ``off``: never. YAML reads a bare ``on`` / ``off`` as
            true / false, which mean the same.
        max_memory_mb: features up to this size (all splits together, per process) are kept in memory; larger
            ones in memory-mapped files.
        directory: where the memory-mapped files go (the system's temporary directory by default); each file is
            unlinked as soon as it is mapped, so nothing is left behind, even by a killed run.
    """

    def __init__(
        self,
        mode: Union[bool, Literal["auto", "on", "off"]] = "auto",
        max_memory_mb: float = 2048.0,
        directory: Optional[str] = None,
    ) -> None:
        named = ("on" if mode else "off") if isinstance(mode, bool) else mode
        if named not in ("auto", "on", "off"):
            raise ConfigError(f"feature_cache.mode={mode!r} must be auto, on or off")
        if max_memory_mb < 0:
            raise ConfigError(f"feature_cache.max_memory_mb={max_memory_mb} must be >= 0")
        self.mode: str = named
        self.max_memory_mb = max_memory_mb
        self.directory = directory
        self._entries: dict[str, _Entry] = {}
        self._served: set[str] = set()  # the splits whose features the datamodule serves now
        self._unusable: Optional[str] = None  # why this fit cannot use the cache at all
        self._planned: Optional[int] = None  # the epoch the loaders were last planned for
        self._rng_at_setup: Optional[torch.Tensor] = None
        self._rng_at_fit_start: Optional[torch.Tensor] = None
        self._rng_to_restore: Optional[torch.Tensor] = None
        self._fingerprint_memo: dict[str, Any] = {}  # see backbone_fingerprint
        self._announced = False
        self.lines: list[str] = []  # every line said, for tests and notebooks

    # --- hooks ------------------------------------------------------------------------------------
    # Lightning asks for an epoch's loaders before that epoch's on_train_epoch_start: epoch e is planned at the
    # end of epoch e - 1 (from the fine-tuning schedule; the weights no longer change before it starts), the
    # first one at on_fit_start (before the sanity check reads validation batches).
    #
    # A loader asked for again costs Lightning one more iterator, whose seeds come from the global generator:
    # where the loaders are switched, the generator is put back to the state the uncached run's iterator draws
    # from, so both runs shuffle the same way.
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._unusable = self._why_unusable(trainer, pl_module)
            self._rng_at_setup = torch.get_rng_state()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._announced, self._rng_to_restore = False, None
        self._rng_at_fit_start = torch.get_rng_state()  # a resumed fit's, restored before this hook
        # A resumed fit learns its epoch after this hook: it is planned at on_train_start.
        if trainer.ckpt_path is None and self._plan(trainer, pl_module, trainer.current_epoch):
            # An LR schedule that counts the run's steps had the trainer make the training loader (and draw its
            # first iterator's seeds) while building the optimizer, after setup; nothing else draws in between.
            if self._rng_at_setup is not None:
                torch.set_rng_state(self._rng_at_setup)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed fit's loaders were made (and one iterator drawn) before this hook, with the samples.
        if trainer.current_epoch != self._planned and self._plan(trainer, pl_module, trainer.current_epoch):
            if self._rng_at_fit_start is not None:
                torch.set_rng_state(self._rng_at_fit_start)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rng_to_restore is not None:  # after the switched loader's first iterator, before the one it uses
            torch.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        following = trainer.current_epoch + 1
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= following:
            return
        if trainer.should_stop and not (trainer.min_epochs or trainer.min_steps):  # early stopping: no next epoch
            return
        state = torch.get_rng_state()
        if self._plan(trainer, pl_module, following):
            self._rng_to_restore = state

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx or "train" not in self._served:
            return
        # After every epoch-start hook: what was planned must hold, or the head would train on stale features.
        changed = self._not_fixed_now(pl_module) or (
            "the training data is augmented now" if self._datamodule(trainer).augments_training else None
        )
        if changed:
            raise TrainingError(
                f"epoch {trainer.current_epoch} was planned to train on the frozen backbone's cached features, "
                f"but {changed}: a callback changed it at the epoch's start. Set feature_cache.mode=off"
            )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release(trainer)

    # --- planning an epoch --------------------------------------------------------------------------
    def _plan(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> bool:
        """Decide which splits read cached features in ``epoch``, compute what is missing or stale, switch the
        loaders where that changes (True) and say so: one line at the fit's start, one at each change."""
        self._planned = epoch
        common = self._unusable or self._not_fixed_at(trainer, pl_module, epoch)
        reasons: dict[str, Optional[str]] = {split: common for split in SPLITS}
        keys: dict[str, tuple[Any, ...]] = {}
        if common is None:
            fingerprint = backbone_fingerprint(pl_module.backbone, self._fingerprint_memo)
            for split in SPLITS:
                dataset = self._dataset(trainer, split)
                keys[split] = (fingerprint, dataset_fingerprint(dataset) if dataset is not None else None)
                reasons[split] = self._reason(trainer, pl_module, epoch, split, keys[split])
        wanted = {split for split in SPLITS if reasons[split] is None}
        computed: dict[str, float] = {}
        for split in sorted(wanted):
            started = time.perf_counter()
            if self._refresh(trainer, pl_module, split, keys[split]):
                computed[split] = time.perf_counter() - started
        for split in set(self._entries) - wanted:  # not read in this epoch: computed again if ever needed
            del self._entries[split]
        switched = wanted != self._served
        if switched:
            datamodule = self._datamodule(trainer)
            for split in SPLITS:
                datamodule.serve_instead(
                    split, self._entries[split].data if split in wanted else None, collate_features
                )
            reload_fit_dataloaders(trainer)
        self._served = wanted
        if not self._announced:
            self._announced = True
            if wanted or self._frozen_somewhere(trainer, pl_module, epoch):
                self._say(self._summary(trainer, pl_module, epoch, reasons, computed))
        elif switched or computed:
            self._say(self._change(epoch, reasons, computed))
        return switched

    def _reason(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, split: str, key: tuple[Any, ...]
    ) -> Optional[str]:
        """Why a split cannot (or need not) read cached features in ``epoch``, the backbone being fixed."""
        datamodule = self._datamodule(trainer)
        if split == "train" and datamodule.augments_training:
            return "the training data is augmented"
        dataset = self._dataset(trainer, split)
        if split == "val" and (dataset is None or len(dataset) == 0 or trainer.limit_val_batches == 0):
            return "the run does not validate"
        entry = self._entries.get(split)
        if self.mode == "on" or (entry is not None and entry.key == key):  # computed already: reading them pays
            return None
        epochs = self._fixed_epochs(trainer, pl_module, epoch)
        if split == "train":
            reads = epochs * _share_read(trainer.limit_train_batches, self._batches(trainer, "train"))
            return (
                None if reads >= MIN_READS else "the epochs left with a frozen backbone read each sample once at most"
            )
        reads = self._validations(trainer, epochs) * _share_read(
            trainer.limit_val_batches, self._batches(trainer, "val")
        )
        return None if reads >= MIN_READS else "the epochs left with a frozen backbone validate once at most"

    def _why_unusable(self, trainer: Trainer, pl_module: LightningModule) -> Optional[str]:
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if self.mode == "off":
            return "as configured (feature_cache.mode=off)"
        if not getattr(pl_module, "learns_from_features", False) or not isinstance(
            getattr(pl_module, "backbone", None), nn.Module
        ):
            return f"{type(pl_module).__name__} learns from its inputs, not from a backbone's features alone"
        if not isinstance(getattr(trainer, "datamodule", None), ZooDataModule):
            return "the data does not come from a zoo datamodule (data: in the config)"
        if type(trainer.strategy) not in (SingleDeviceStrategy, DDPStrategy):
            return f"the {type(trainer.strategy).__name__} strategy wraps or shards the model"
        if trainer.overfit_batches:
            return "trainer.overfit_batches reads a few batches only"
        return None

    def _not_fixed_at(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> Optional[str]:
        """Why the backbone is not a fixed feature extractor in ``epoch`` (None: it is), from the fine-tuning
        schedule where there is one, else from the backbone as it is now."""
        finetuning = _finetuning(trainer)
        if finetuning is None or finetuning.strategy == "full":
            return self._not_fixed_now(pl_module)
        if finetuning.extracts_features_at(epoch):
            return None
        if finetuning.bn_mode == "train" and not finetuning.trainable_at(epoch, finetuning.backbone_groups()):
            return "the frozen backbone's batch norms train (finetuning.bn_mode=train)"
        return f"the backbone trains in epoch {epoch}"

    @staticmethod
    def _not_fixed_now(pl_module: LightningModule) -> Optional[str]:
        backbone = pl_module.backbone
        if any(p.requires_grad for p in backbone.parameters()):
            return "the backbone trains"
        if any(m.training for m in backbone.modules()):
            return "the frozen backbone runs in training mode (dropout, batch statistics)"
        return None

    def _fixed_epochs(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> float:
        """How many epochs from ``epoch`` on keep the backbone fixed, within the run's epochs and steps."""
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else UNBOUNDED_EPOCHS
        finetuning = _finetuning(trainer)
        if finetuning is None or finetuning.strategy == "full":
            epochs = max(0, last - epoch)
        else:
            epochs = 0
            while epoch + epochs < last and finetuning.extracts_features_at(epoch + epochs):
                epochs += 1
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            steps_per_epoch = max(1, self._batches(trainer, "train") // max(1, trainer.accumulate_grad_batches))
            epochs = min(epochs, math.ceil(max(0, trainer.max_steps - trainer.global_step) / steps_per_epoch))
        return float(epochs)

    @staticmethod
    def _validations(trainer: Trainer, epochs: float) -> float:
        every = trainer.check_val_every_n_epoch or 1
        per_epoch = 1 / trainer.val_check_interval if isinstance(trainer.val_check_interval, float) else 1
        return math.floor(epochs / every) * max(1.0, per_epoch)

    def _batches(self, trainer: Trainer, split: str) -> int:
        """The batches of a split one process reads in a whole epoch."""
        datamodule = self._datamodule(trainer)
        share = math.ceil(len(self._dataset(trainer, split)) / trainer.world_size)
        return max(1, math.ceil(share / datamodule.batch_size))

    def _frozen_somewhere(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> bool:
        """Whether the backbone is frozen in some epoch of the fit: only then is the cache worth a line."""
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            return False
        finetuning = _finetuning(trainer)
        if finetuning is not None and finetuning.strategy != "full":
            names = finetuning.backbone_groups()
            last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else epoch + 1
            return any(not finetuning.trainable_at(e, names) for e in range(epoch, max(last, epoch + 1)))
        return not any(p.requires_grad for p in pl_module.backbone.parameters())

    # --- computing the features ---------------------------------------------------------------------
    def _refresh(self, trainer: Trainer, pl_module: LightningModule, split: str, key: tuple[Any, ...]) -> bool:
        """Compute a split's features where they are missing or their key changed; True where it did."""
        entry = self._entries.get(split)
        if entry is not None and entry.key == key:
            return False
        self._entries.pop(split, None)  # its memory goes before the new one is taken
        datamodule = self._datamodule(trainer)
        held = sum(e.nbytes for e in self._entries.values() if e.path is None)
        path: Optional[str] = None

        def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            nonlocal path  # in memory while every split's features fit in max_memory_mb
            if held + table_bytes(shape, dtype) > self.max_memory_mb * 2**20:
                path = self.directory or tempfile.gettempdir()
            return allocate_table(shape, dtype, path)

        def loader_of(subset: Dataset, generator: torch.Generator) -> DataLoader:
            return DataLoader(
                subset,
                datamodule.batch_size,
                collate_fn=datamodule.collate_fn(),
                num_workers=datamodule.num_workers,
                generator=generator,
            )

        dataset = self._dataset(trainer, split)
        features, targets = compute_features(trainer, pl_module, dataset, loader_of, allocate)
        nbytes = features.numel() * features.element_size()
        if entry is not None and split in self._served:  # the loader holds that dataset: it reads the new tensors
            entry.data.features, entry.data.targets = features, targets
            self._entries[split] = _Entry(entry.data, key, nbytes, path)
        else:
            self._entries[split] = _Entry(CachedFeatures(features, targets), key, nbytes, path)
        return True

    # --- the lines it says --------------------------------------------------------------------------
    def _summary(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        epoch: int,
        reasons: dict[str, Optional[str]],
        computed: dict[str, float],
    ) -> str:
        if reasons["train"] is not None and reasons["val"] is not None:
            return f"feature cache: off, {reasons['train']}"
        head = "on" if reasons["train"] is None else f"validation only, {reasons['train']}"
        why = f"the backbone is frozen and in eval mode in {self._epoch_range(trainer, pl_module, epoch)}"
        if reasons["train"] is None:
            why += " and the training data is not augmented"
        return f"feature cache: {head}; {why}: {self._what(computed)}"

    def _change(self, epoch: int, reasons: dict[str, Optional[str]], computed: dict[str, float]) -> str:
        if not self._served and not computed:
            return f"feature cache: epoch {epoch} reads the inputs again, {reasons['train']}"
        return f"feature cache: epoch {epoch}: {self._what(computed)}"

    def _what(self, computed: dict[str, float]) -> str:
        parts = []
        for split in SPLITS:
            entry = self._entries.get(split)
            if split not in self._served or entry is None:
                continue
            where = "in memory" if entry.path is None else f"memory-mapped under {entry.path}"
            how = f"computed in {computed[split]:.1f} s" if split in computed else "kept"
            parts.append(f"{len(entry.data):,} {NAMES[split]} samples' features {how} ({_size(entry.nbytes)} {where})")
        return "; ".join(parts) or "nothing cached"

    def _epoch_range(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> str:
        epochs = int(self._fixed_epochs(trainer, pl_module, epoch))
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return f"epochs {epoch} on"
        return f"epoch {epoch}" if epochs <= 1 else f"epochs {epoch}-{epoch + epochs - 1}"

    def _say(self, line: str) -> None:
        self.lines.append(line)
        rank_zero_info(line)

    # --- the rest -------------------------------------------------------------------------------------
    def _dataset(self, trainer: Trainer, split: str) -> Any:
        datamodule = self._datamodule(trainer)
        return datamodule.train_set if split == "train" else datamodule.val_set

    @staticmethod
    def _datamodule(trainer: Trainer) -> ZooDataModule:
        return trainer.datamodule

    def _release(self, trainer: Trainer) -> None:
        """Serve the splits' own samples again and free the features."""
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ZooDataModule):
            for split in self._served:
                datamodule.serve_instead(split, None)
        self._served, self._entries, self._planned, self._fingerprint_memo = set(), {}, None, {}


def _finetuning(trainer: Trainer) -> Optional[FineTuning]:
    return next((c for c in trainer.callbacks if isinstance(c, FineTuning)), None)


def _share_read(limit: Union[int, float], batches: int) -> float:
    """The share of a split's batches an epoch reads under ``limit_*_batches`` (a count or a fraction)."""
    if isinstance(limit, int):
        return min(1.0, limit / batches)
    return min(1.0, float(limit))


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"
