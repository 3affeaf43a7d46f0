"""Loggers of the zoo. The default is Lightning's CSVLogger (no account needed); this adds W&B."""

from __future__ import annotations

import netrc
import os
from typing import Any, Optional

import yaml
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only


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

    The resolved CLI config (model, data, trainer) becomes the W&B run config.

    Args:
        project: W&B project name.
        name: run name (W&B picks one when empty).
        save_dir: where the local W&B files go (``<save_dir>/wandb``).
        offline: force offline (True) or online (False); by default offline exactly when not logged in.
        log_model: upload checkpoints as W&B artifacts (online runs only).
        entity: W&B team or user.
        tags: run tags.
    """

    def __init__(
        self,
        project: str = "zoo",
        name: Optional[str] = None,
        save_dir: str = "runs",
        offline: Optional[bool] = None,
        log_model: bool = False,
        entity: Optional[str] = None,
        tags: Optional[list[str]] = None,
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_logged_in()
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(
            name=name, save_dir=save_dir, offline=offline, project=project,
            log_model=log_model and not offline, entity=entity, tags=tags,
        )  # fmt: skip
        self._sync_hint_shown = False

    @rank_zero_only
    def log_resolved_config(self, config_yaml: str) -> None:
        """Make the CLI's resolved config (as YAML text) the run's config."""
        config: dict[str, Any] = yaml.safe_load(config_yaml) or {}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._offline and not self._sync_hint_shown and self._experiment is not None:
            run_dir = os.path.dirname(self._experiment.dir.rstrip(os.sep))
            print(f"W&B run logged offline (no login). Upload it with:\n  wandb sync {run_dir}")
            self._sync_hint_shown = True
