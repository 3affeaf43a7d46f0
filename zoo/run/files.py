"""Where a run's files go (its folder) and how its checkpoints are written: whole or not at all, so that a kill
at any moment leaves the newest one loadable."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from zoo.checkpoints import read_checkpoint


def run_folder(of: Any) -> Path:
    """A run's own folder (``runs/<name>/version_<n>``): the folder above its ``checkpoints/``, which holds its
    resolved config, metrics, pictures and exports.

    Args:
        of: a checkpoint file of the run; or the run's Trainer, whose checkpoints go where Lightning's
            ModelCheckpoint puts them, known before that callback has set up: its ``dirpath`` when given, else
            ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, else ``<default_root_dir>/checkpoints``.
    """
    if isinstance(of, (str, os.PathLike)):
        return Path(of).parent.parent
    trainer = of
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        return Path(dirpath).parent
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir, str(logger.name), version)


class MetricsInRunFolder(Callback):
    """Every run folder holds ``metrics.csv``, whatever the run logs to: a run without a CSVLogger (one that logs to
    W&B, MLflow or TensorBoard) gets one beside its loggers, writing into the run folder, so `zoo report` and
    anything else that reads a run folder work the same for every tracker. The first logger still names the folder.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not trainer.loggers or any(isinstance(lg, CSVLogger) for lg in trainer.loggers):
            return
        folder = Path(trainer.strategy.broadcast(run_folder(trainer)))
        csv = CSVLogger(save_dir=folder.parent.parent, name=folder.parent.name, version=folder.name)
        if trainer.is_global_zero:
            # Its writer, made now rather than at the first metric, warns when the folder is not empty (it is not:
            # the run's config, a tracker's files) and removes the metrics.csv of an earlier run of the same folder.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Experiment logs directory")
                csv.experiment
        trainer.loggers = [*trainer.loggers, csv]


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove what killed checkpoint writes left under ``folder`` (``.<name>.partial-<pid>`` files whose writer
    is gone); a live writer's file (another run of the same tree) is kept. Returns the files removed."""
    removed = []
    for partial in folder.rglob(".*.partial-*") if folder.is_dir() else []:
        pid = partial.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written whole or not at all, and read without running code.

    Args:
        trusted: classes a checkpoint read here may name beside :data:`TRUSTED`: those of the run's own config.

    A checkpoint is written to a hidden file beside its target, flushed to disk (fsync), then renamed over the
    target: a kill at any moment leaves either the previous file or the new one, never half of one (Lightning
    truncates the target and writes into it). A partial file left by a killed writer is removed by the next
    checkpoint write in that folder, and when a fit of that experiment starts (:func:`remove_stale_partials`).
    Reading goes through :func:`read_checkpoint` (``weights_only=True``).
    """

    def __init__(self, trusted: Collection[str] = ()) -> None:
        super().__init__()
        self.trusted = frozenset(trusted)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage (s3://, gs://): fsspec's own writer, as Lightning does
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target.parent)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        _fsync_dir(target.parent)  # the rename itself survives a power cut

    def load_checkpoint(
        self, path: Any, map_location: Optional[Callable] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(str(path), trusted=self.trusted)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
