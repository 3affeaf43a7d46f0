"""Which checkpoint a run resumes from: ``--ckpt_path last`` finds this config's own newest one, where Lightning
writes it, never another experiment's; and a fit resumes only the experiment a checkpoint was trained as."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import WandbLogger

from zoo.checkpoints import classes_named, read_checkpoint, run_config
from zoo.errors import ConfigError, ZooError
from zoo.trackers import MLFlowLogger


def resolve_last_checkpoint(config: Any, fresh_if_none: bool = True) -> Optional[str]:
    """``--ckpt_path last``: the newest checkpoint of this config's own runs (:func:`checkpoint_folders`; each run
    writes into a new ``version_<n>``, so Lightning's own lookup, in the new run's folder, finds nothing), passing
    over those of other experiments where several share a folder (no logger, or a shared ``checkpoint.dirpath``).

    Args:
        fresh_if_none: with no checkpoint yet, return None with a note (a fit starts fresh, so the same command
            serves a job that may be preempted); otherwise (evaluation) refuse.
    """
    folders, where = checkpoint_folders(config)
    plain, others = as_dict(config), 0
    own = classes_named(plain)
    for path in resumable_checkpoints(folders):
        try:
            check_same_experiment(read_checkpoint(str(path), mmap=True, trusted=own), str(path), plain)
        except ZooError:
            others += 1
            continue
        print(f"resuming from {path}", file=sys.stderr)
        return str(path)
    passed = f" (passing over {others} checkpoint(s) of other experiments or unreadable)" if others else ""
    if not fresh_if_none:
        raise ConfigError(
            f"--ckpt_path last: this config's runs ({where}) hold no checkpoint of it{passed}; train "
            "it with `zoo fit` first, or give the checkpoint's path"
        )
    print(
        f"--ckpt_path last: no checkpoint of this config in {where} yet{passed}, starting a fresh run", file=sys.stderr
    )
    return None


def checkpoint_folders(config: Any) -> tuple[list[Path], str]:
    """The folders this config's runs write checkpoints into, as Lightning's ModelCheckpoint places them, and how
    to name them in a message: ``checkpoint.dirpath``; else ``<save_dir>/<name>/<version>/checkpoints`` of its
    (first) logger, where ``name`` is the logger's experiment name (W&B: its project; MLflow: its experiment
    name; none: no such level);
    else, with no logger, ``<default_root_dir>/checkpoints``."""
    dirpath = config_value(config, "checkpoint.dirpath")
    if dirpath:
        return [Path(dirpath)], f"{dirpath}/"
    root = config_value(config, "trainer.default_root_dir") or "runs"
    logger = config_value(config, "trainer.logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    if logger is None or logger is False:
        return [Path(root) / "checkpoints"], f"{root}/checkpoints/"
    if not hasattr(logger, "get"):  # True: Lightning's default, a TensorBoard or CSV logger in <root>/lightning_logs
        experiment = Path(root) / "lightning_logs"
    else:
        init_args = logger.get("init_args") or {}
        key, default = _experiment_name_argument(logger.get("class_path"))
        name = init_args[key] if key in init_args else default
        experiment = Path(init_args.get("save_dir") or root) / (str(name) if name else "")
    return sorted(experiment.glob("*/checkpoints")), f"{experiment}/*/checkpoints/"


def _experiment_name_argument(class_path: Any) -> tuple[str, Any]:
    """The logger argument that names its experiment folder (``name``; W&B's ``project``; the zoo's MLflow
    logger's ``experiment_name``) and its default."""
    module, _, attr = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)  # the user's own config's logger class
        parameters = inspect.signature(cls).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return "name", "lightning_logs"
    key = "name"
    if isinstance(cls, type) and issubclass(cls, WandbLogger):
        key = "project"
    elif isinstance(cls, type) and issubclass(cls, MLFlowLogger):
        key = "experiment_name"
    default = parameters[key].default if key in parameters else None
    return key, default if default is not inspect.Parameter.empty else None


def config_value(config: Any, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``, None where a level is missing (configs are dicts or Namespaces)."""
    for key in dotted.split("."):
        config = config.get(key) if hasattr(config, "get") else None
    return config


def as_dict(config: Any) -> Any:
    """A jsonargparse Namespace as nested dicts."""
    return config.as_dict() if hasattr(config, "as_dict") else config


def resumable_checkpoints(folders: list[Path]) -> list[Path]:
    """The checkpoints to resume from, newest first: each folder's ``last*.ckpt``, or where a run has none (killed
    before it wrote one), its ``best-*.ckpt``. Files are written whole (:class:`AtomicCheckpointIO`), and a killed
    write's ``.partial`` file is never a candidate."""
    found = []
    for folder in folders:
        last = [p for p in folder.glob("last*.ckpt") if p.is_file()]
        found += last or [p for p in folder.glob("best*.ckpt") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def check_same_experiment(ckpt: dict[str, Any], path: str, config: dict[str, Any]) -> None:
    """Refuse to resume a fit from a checkpoint of another experiment: its task, backbone or data class differs
    from the config's."""
    stored = {
        "task": (ckpt.get("hyper_parameters") or {}).get("_class_path"),
        "backbone": (ckpt.get("hyper_parameters") or {}).get("backbone"),
        "data": ((run_config(ckpt) or {}).get("data") or {}).get("class_path"),
    }
    model, data = config.get("model") or {}, config.get("data") or {}
    asked = {
        "task": model.get("class_path"),
        "backbone": (model.get("init_args") or {}).get("backbone"),
        "data": data.get("class_path"),
    }
    differ = [key for key in stored if stored[key] and asked[key] and stored[key] != asked[key]]
    if differ:
        was = ", ".join(f"{key} {stored[key]}" for key in differ)
        now = ", ".join(f"{key} {asked[key]}" for key in differ)
        raise ConfigError(
            f"{path} is another experiment's checkpoint: it was trained with {was}, this config has "
            f"{now}. Resume with the config it was trained with, or drop --ckpt_path to train this one "
            "from scratch (model.backbone: zoo/<checkpoint> starts from its trained backbone)"
        )
