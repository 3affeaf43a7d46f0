"""Reading what `zoo fit` wrote (a checkpoint's task, its resolved config and its data facts), and writing
checkpoints so that a kill at any moment leaves the newest one loadable.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain Python values only, so a
tampered file cannot run code. A zoo checkpoint carries everything needed to use the model again (the
task's hyperparameters, the resolved config under ``zoo_config``, the datamodule's state such as class
names), so `zoo predict`, `zoo export` and `zoo report` need only its path.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO

from zoo.errors import ConfigError

CONFIG_KEY = "zoo_config"  # the resolved CLI config, as YAML text


def read_checkpoint(path: str, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's contents, loaded without running any pickled code.

    Args:
        path: the checkpoint file.
        mmap: map the file instead of reading it: tensors are read only when touched, so asking a large
            checkpoint for its hyperparameters or run id costs almost nothing.

    Raises:
        ConfigError: the file is missing, truncated or corrupt, holds code (a pickle payload or a class
            the safe loader refuses), or is not a Lightning checkpoint.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001  (every failure of the safe loader means the same to a user)
        said = " ".join(str(err).split())
        if "weights_only" in said.lower() or "unsupported global" in said.lower():
            raise ConfigError(
                f"checkpoint {path}: refused, it holds Python objects that safe loading does not run "
                f"({said[:160]}...). Only load checkpoints you trust; a zoo checkpoint holds none"
            ) from None
        raise ConfigError(f"checkpoint {path}: cannot read it ({type(err).__name__}: {said[:200]}); it may be "
                          "truncated or corrupt") from None  # fmt: skip
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"checkpoint {path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def _zoo_class(class_path: Any, package: str, base: type, path: str, what: str) -> type:
    """The class a checkpoint names, imported only from the zoo's own ``package`` and a subclass of ``base``:
    a checkpoint never makes us import or build anything else."""
    if not isinstance(class_path, str) or not class_path.startswith(f"{package}."):
        raise ConfigError(f"{path}: not a zoo checkpoint (its {what} class is {class_path!r}); "
                          "use a checkpoint that `zoo fit` wrote")  # fmt: skip
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise ConfigError(f"{path}: cannot import its {what} {class_path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{path}: unknown zoo {what} {class_path!r}")
    return cls


def task_class(ckpt: dict[str, Any], path: str = "the checkpoint") -> type:
    """The zoo task class a checkpoint was trained with; any other class path is refused."""
    from zoo.tasks.base import ZooTask

    hparams = ckpt.get("hyper_parameters") or {}
    return _zoo_class(hparams.get("_class_path"), "zoo.tasks", ZooTask, path, "task")


def load_task(path: str, ckpt: Optional[dict[str, Any]] = None) -> Any:
    """The trained task of a `zoo fit` checkpoint, weights loaded, in eval mode.

    The network is rebuilt from the checkpoint's own hyperparameters without fetching pretrained weights
    (the checkpoint holds every weight).
    """
    from lightning.pytorch.cli import instantiate_module

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    cls = task_class(ckpt, path)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "_instantiator"}
    hparams["pretrained"] = False
    try:
        task = instantiate_module(cls, hparams)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{path}: cannot rebuild its model: {' '.join(str(err).split())[:300]}") from None
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: its weights do not fit the model it describes (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]})")  # fmt: skip
    return task.eval()


def load_datamodule(ckpt: dict[str, Any], path: str, instead: str) -> Any:
    """The checkpoint's datamodule, built from its resolved config and restored from its saved state
    (statistics, vocabulary, class names), before any ``setup``.

    Args:
        instead: what to do when the checkpoint has no resolved config (written by an older zoo).
    """
    from datamodules.base import ZooDataModule

    data = (run_config(ckpt) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ConfigError(f"{path} has no resolved config to rebuild its data from (it was written before "
                          f"checkpoints carried one, or not by `zoo fit`); {instead}")  # fmt: skip
    cls = _zoo_class(data["class_path"], "datamodules", ZooDataModule, path, "datamodule")
    datamodule = cls(**(data.get("init_args") or {}))
    datamodule.load_state_dict(datamodule_state(ckpt))
    return datamodule


def run_config(ckpt: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The resolved CLI config the checkpoint was trained with (None for checkpoints written before it was saved)."""
    text = ckpt.get(CONFIG_KEY)
    return yaml.safe_load(text) if isinstance(text, str) else None


def datamodule_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The datamodule's saved state (class names, vocabulary, normalisation...), or {} when there is none."""
    config = run_config(ckpt) or {}
    data = config.get("data") or {}
    name = str(data.get("class_path", "")).rpartition(".")[2]
    state = ckpt.get(name) if name else None
    return state if isinstance(state, dict) else {}


def class_names(ckpt: dict[str, Any]) -> Optional[list[str]]:
    """The class names, index-aligned with the model's outputs, when the data had them."""
    names = datamodule_state(ckpt).get("class_names")
    return [str(n) for n in names] if names else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written whole or not at all, and read without running code.

    A checkpoint is written to a hidden file beside its target, flushed to disk (fsync), then renamed over the
    target: a kill at any moment leaves either the previous file or the new one, never half of one (Lightning
    truncates the target and writes into it). A partial file left by a killed writer is removed by the next
    write of the same checkpoint. Reading goes through :func:`read_checkpoint` (``weights_only=True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage (s3://, gs://): fsspec's own writer, as Lightning does
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.partial-*"):
            stale.unlink(missing_ok=True)
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
        return read_checkpoint(str(path))


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
