"""Loggers of the zoo. The default is Lightning's CSVLogger (no account needed); this adds W&B.

A W&B run spans a resumed fit: every checkpoint stores its run id (``wandb_run_id``), and
``zoo fit --ckpt_path CKPT`` with a W&B logger that names no run id continues that run.
"""

from __future__ import annotations

import glob
import importlib
import netrc
import os
import sys
from typing import Any, Literal, Optional, Union

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from zoo.compat import wandb_init_kwargs, wandb_offline, wandb_run_if_started

RUN_ID_KEY = "wandb_run_id"  # in a checkpoint: the W&B run it was written by


def wandb_logged_in() -> bool:
    """Whether W&B credentials are available (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Weights & Biases that works without an account: with no login the run is logged offline and
    the `wandb sync` command to upload it is printed when training ends.

    The resolved CLI config (model, data, trainer) becomes the W&B run config. Under DDP only the rank 0
    process creates a run (Lightning's ``rank_zero_experiment``); the others log nothing.

    Args:
        project: W&B project name.
        name: run name (W&B picks one when empty).
        save_dir: where the local W&B files go (``<save_dir>/wandb``).
        offline: force offline (True) or online (False); by default offline exactly when not logged in.
        log_model: upload checkpoints as ``model-<run id>`` artifacts of type ``model`` (online runs only):
            True uploads the best and last checkpoints once training ends (aliases ``best`` and ``latest``),
            ``"all"`` every checkpoint as it is written. Ignored, with a warning, when offline.
        entity: W&B team or user.
        tags: run tags.
        id: the run to log to (created if it does not exist, continued if it does). Empty: a new run, or
            under ``zoo fit --ckpt_path`` the run that wrote the checkpoint.
    """

    def __init__(
        self,
        project: str = "zoo",
        name: Optional[str] = None,
        save_dir: str = "runs",
        offline: Optional[bool] = None,
        log_model: Union[bool, Literal["all"]] = False,
        entity: Optional[str] = None,
        tags: Optional[list[str]] = None,
        id: Optional[str] = None,  # noqa: A002  (W&B's and Lightning's name for it)
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_logged_in()
        if offline and log_model:
            rank_zero_warn(f"W&B is offline: log_model={log_model!r} is ignored (artifacts need an online run)")
            log_model = False
        os.makedirs(save_dir, exist_ok=True)
        # Lightning's logger passes resume="allow" to wandb.init: a known id continues that run.
        super().__init__(
            name=name,
            save_dir=save_dir,
            offline=offline,
            project=project,
            log_model=log_model,
            entity=entity,
            tags=tags,
            id=id,
        )
        if wandb_init_kwargs(self).get("anonymous") is None:  # wandb 0.31 warns about the setting even when None
            wandb_init_kwargs(self).pop("anonymous", None)
        self._sync_hint_shown = False

    @rank_zero_only
    def log_resolved_config(self, config_yaml: str) -> None:
        """Make the CLI's resolved config (as YAML text) the run's config."""
        config: dict[str, Any] = yaml.safe_load(config_yaml) or {}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        run = wandb_run_if_started(self)
        if wandb_offline(self) and not self._sync_hint_shown and run is not None:
            run_dir = os.path.dirname(run.dir.rstrip(os.sep))
            # A resumed run has one folder per process that logged it (same id): all of them, oldest first.
            pattern = os.path.join(os.path.dirname(run_dir), f"offline-run-????????_??????-{run.id}")
            folders = " ".join(sorted(glob.glob(pattern)) or [run_dir])
            print(f"W&B run logged offline (no login). Upload it with:\n  wandb sync {folders}")
            self._sync_hint_shown = True


# --- one W&B run across a resumed fit -------------------------------------------------------------
def run_id_of(trainer: Trainer) -> Optional[str]:
    """The id of the trainer's W&B run (its first W&B logger's), if it logs to W&B. None on the processes
    other than rank 0 under DDP, which have no run."""
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger) and logger.version:
            return str(logger.version)
    return None


def store_run_id(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Write the trainer's W&B run id into a checkpoint being saved (nothing without a W&B logger)."""
    run_id = run_id_of(trainer)
    if run_id is not None:
        checkpoint[RUN_ID_KEY] = run_id


def stored_run_id(ckpt_path: str, trusted: frozenset[str] = frozenset()) -> Optional[str]:
    """The W&B run id a checkpoint stores, or None (no such file, not readable, or no W&B run). ``trusted``: the
    classes of the user's own config, which the checkpoint may name too (see ``zoo.checkpoints.read_checkpoint``)."""
    from zoo.checkpoints import read_checkpoint
    from zoo.errors import ZooError

    try:  # memory-mapped: a large checkpoint's tensors are not read just for this string
        run_id = read_checkpoint(ckpt_path, mmap=True, trusted=trusted).get(RUN_ID_KEY)
    except ZooError:  # the checkpoint's own load reports it
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def continue_stored_run(config: Any) -> Optional[str]:
    """For ``zoo fit --ckpt_path CKPT``: point each W&B logger that names no run id at the run that wrote
    the checkpoint, so the resumed training continues it instead of starting a new one.

    Args:
        config: the fit command's parsed config (``trainer.logger`` and ``ckpt_path`` are read; the logger's
            ``init_args.id`` is set in place).

    Returns:
        The run id reused, or None where nothing was changed.
    """
    ckpt_path = config.get("ckpt_path")
    if not isinstance(ckpt_path, str) or not os.path.isfile(ckpt_path):
        return None  # none, or "last" / "best" / "hpc", which Lightning resolves later
    trainer = config.get("trainer") or {}
    loggers = trainer.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    targets = [lg for lg in loggers if _is_wandb_logger(lg) and not _named_run(lg)]
    if not targets:
        return None
    from zoo.checkpoints import classes_named
    from zoo.resume import as_dict

    run_id = stored_run_id(ckpt_path, classes_named(as_dict(config)))
    if run_id is None:
        return None
    for logger in targets:
        logger["init_args"]["id"] = run_id
    if rank_zero_only.rank == 0:
        print(f"W&B: continuing run {run_id}, stored in {ckpt_path}", file=sys.stderr)
    return run_id


def _is_wandb_logger(logger: Any) -> bool:
    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    if not isinstance(class_path, str) or logger.get("init_args") is None:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, _LightningWandbLogger)


def _named_run(logger: Any) -> bool:
    init_args = logger["init_args"]
    return bool(init_args.get("id") or init_args.get("version"))
