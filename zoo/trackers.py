"""MLflow and TensorBoard loggers, and the one path by which a run's pictures and histograms reach every tracker.

A tracker (W&B in :mod:`zoo.loggers`, MLflow and TensorBoard here) gets the same content: the resolved config
(:meth:`log_resolved_config`, called by the CLI's config saver), every metric, the run's pictures
(:func:`log_picture`, from :class:`~zoo.callbacks.pictures.RunPictures`) and histograms of weights and gradients
(:func:`log_histograms`, from :class:`~zoo.callbacks.monitoring.ParameterHistograms`) where the tracker shows
them. Lightning's own W&B, MLflow and TensorBoard loggers get the pictures and histograms too.

mlflow and tensorboard are optional (``pip install -e '.[trackers]'``) and imported only when a run logs to them:
picking a logger without its package is a configuration error that names the install command.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from zoo.errors import ConfigError

DIAGNOSIS_FILE = "diagnosis.json"  # the findings `zoo fit` writes into the run folder (issue 16), an MLflow artifact
PICTURES_PATH = "pictures"  # the MLflow artifact folder of the run's PNG files, as in the W&B keys ``pictures/...``
MLFLOW_DB = "mlflow.db"  # the default backend store: sqlite:///<save_dir>/mlflow.db
MLFLOW_ARTIFACTS = "mlartifacts"  # the default artifact folder: <save_dir>/mlartifacts
PICTURE_LOGGERS = (_LightningWandbLogger, _LightningMLFlowLogger, _LightningTensorBoardLogger)
HISTOGRAM_LOGGERS = (_LightningWandbLogger, _LightningTensorBoardLogger)  # MLflow has no histograms


def require(module: str, logger: str) -> None:
    """Stop with a configuration error (exit code 2 from the CLI) that says how to install ``module`` when it is
    missing; nothing is imported."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"the {logger} logger needs the {module} package, which is not installed: pip install {module} "
            "(or, in the zoo's folder, pip install -e '.[trackers]'), or pick another logger"
        )


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Union[str, int, float]]:
    """A nested config as one level of dotted keys (``model.init_args.optimizer.init_args.lr``), the values as
    the YAML says them: numbers stay numbers, the rest is text (``true``, ``null``, ``[32, 64]``)."""
    flat: dict[str, Union[str, int, float]] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool) or value is None:
            flat[name] = json.dumps(value)
        elif isinstance(value, (int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


# --- the same pictures and histograms in every tracker -------------------------------------------------------
def picture_loggers(trainer: Any) -> list[Any]:
    """The run's loggers that show pictures: W&B, MLflow and TensorBoard (the zoo's or Lightning's own)."""
    return [lg for lg in trainer.loggers if isinstance(lg, PICTURE_LOGGERS)]


def log_picture(trainer: Any, key: str, figure: Any, file: Optional[Path] = None) -> None:
    """Send a matplotlib figure to each of the run's loggers that shows pictures, at the current step.

    Args:
        key: its name in the tracker (``pictures/val_samples``); each new step adds an image under it.
        file: the PNG the figure was saved as in the run folder, if any: MLflow keeps it as the artifact
            ``pictures/<file name>`` (replaced when drawn again); figures without one are MLflow step images.
    """
    loggers = picture_loggers(trainer)
    if not loggers:
        return
    from zoo.plots import figure_to_array

    image, step = figure_to_array(figure), trainer.global_step  # (H, W, 3) uint8
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger):
            logger.log_image(key=key, images=[image], step=step)
        elif isinstance(logger, _LightningTensorBoardLogger):
            logger.experiment.add_image(key, image, step, dataformats="HWC")
        elif file is not None:
            logger.experiment.log_artifact(logger.run_id, str(file), PICTURES_PATH)
        else:
            logger.experiment.log_image(logger.run_id, image, key=key, step=step)


def histogram_loggers(trainer: Any) -> list[Any]:
    """The run's loggers that show histograms: TensorBoard and W&B."""
    return [lg for lg in trainer.loggers if isinstance(lg, HISTOGRAM_LOGGERS)]


def log_histograms(trainer: Any, tensors: Mapping[str, Any]) -> None:
    """Send the histogram of each tensor (``weights/<parameter>``: values) to the run's loggers that show them."""
    loggers = histogram_loggers(trainer)
    if not loggers or not tensors:
        return
    values = {tag: t.detach().float().flatten().cpu() for tag, t in tensors.items()}
    for logger in loggers:
        if isinstance(logger, _LightningTensorBoardLogger):
            for tag, value in values.items():
                logger.experiment.add_histogram(tag, value, trainer.global_step)
        else:
            import wandb

            histograms = {tag: wandb.Histogram(value.numpy()) for tag, value in values.items()}
            logger.log_metrics(histograms, step=trainer.global_step)


# --- MLflow ----------------------------------------------------------------------------------------------------
class MLFlowLogger(_LightningMLFlowLogger):
    """MLflow, by default into a local SQLite store (``sqlite:///<save_dir>/mlflow.db``) and artifact folder
    (``<save_dir>/mlartifacts``): no server needed. See it with
    ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` (the UI comes with the full ``mlflow`` package).

    A run holds: the resolved config as params (flattened: ``model.init_args.optimizer.init_args.lr``) and as the
    artifact ``config.yaml``; every metric; the run's pictures (artifacts ``pictures/*.png``, and each
    validation's confusion matrix and samples as step images); ``diagnosis.json`` when the fit wrote one; and,
    with ``log_model``, the best checkpoint as a logged model (MLflow's "Models" tab) when training ends.
    The run's own folder (checkpoints, config, metrics) is ``<save_dir>/<experiment_name>/<run id>/``.

    Args:
        experiment_name: the MLflow experiment (created if it does not exist).
        run_name: the run's name (MLflow picks one when empty).
        tracking_uri: any MLflow tracking URI (``http://host:5000``, ``sqlite:///path.db``, ``databricks``);
            empty: ``$MLFLOW_TRACKING_URI``, else the local SQLite store in ``save_dir``.
        save_dir: the local folder of the run folders (and of the default store and artifacts).
        tags: tags of the run.
        log_model: log the best checkpoint (the last where none is best) as a logged model once training ends.
        artifact_location: where a new experiment keeps its artifacts; empty: ``<save_dir>/mlartifacts`` with a
            local store, the server's choice with a remote one.
        run_id: log to this existing run instead of a new one (its params keep their first values).
        prefix: put before every metric name.
    """

    def __init__(
        self,
        experiment_name: str = "zoo",
        run_name: Optional[str] = None,
        tracking_uri: Optional[str] = None,
        save_dir: str = "runs",
        tags: Optional[dict[str, Any]] = None,
        log_model: bool = True,
        artifact_location: Optional[str] = None,
        run_id: Optional[str] = None,
        prefix: str = "",
    ) -> None:
        require("mlflow", "MLflow")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{save_dir}/{MLFLOW_DB}"
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        if artifact_location is None and local:
            artifact_location = (Path(save_dir).resolve() / MLFLOW_ARTIFACTS).as_uri()
        if tracking_uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=tags,
            save_dir=save_dir,
            log_model=False,  # the best checkpoint is logged here, as a logged model rather than run artifacts
            prefix=prefix,
            artifact_location=artifact_location,
            run_id=run_id,
        )
        self.experiment_name, self.tracking_uri, self.local_dir = experiment_name, tracking_uri, save_dir
        self.log_best_model = log_model
        self._config_logged = False
        self._checkpoint: Any = None  # the ModelCheckpoint of the run, from after_save_checkpoint
        self._uploaded: dict[str, float] = {}  # file -> modification time when it was logged
        self._hint_shown = False

    @property
    def save_dir(self) -> str:
        """The local folder of the run folders (Lightning's is None for a tracking URI other than ``file:``)."""
        return self.local_dir

    @property
    def name(self) -> str:
        """The experiment's name, the run folder's parent (Lightning's is the experiment id, a number)."""
        return self.experiment_name

    @rank_zero_only
    def log_resolved_config(self, config_yaml: str) -> None:
        """The CLI's resolved config (YAML text) as the run's params, flattened, and as ``config.yaml``."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        params = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flat_config(yaml.safe_load(config_yaml) or {}).items()}
        logged = self.experiment.get_run(self.run_id).data.params  # a run continued by run_id has its params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            rank_zero_warn(
                f"MLflow run {self.run_id} keeps its first values of {', '.join(changed)} (params are fixed)"
            )
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params a call
            self.experiment.log_batch(self.run_id, params=new[start : start + 100])
        self.experiment.log_text(self.run_id, config_yaml, "config.yaml")
        self._config_logged = True

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # The resolved config holds the model's and data's arguments already; without it, Lightning's params.
        if not self._config_logged:
            super().log_hyperparams(params)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._checkpoint = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        super().finalize(status)
        if status != "success" or (not self._config_logged and self._checkpoint is None):
            return  # nothing was logged: no run to add to
        folder = Path(self._checkpoint.dirpath).parent if self._checkpoint is not None else None
        folder = folder or Path(self.save_dir, self.name, str(self.run_id))
        diagnosis = folder / DIAGNOSIS_FILE
        if diagnosis.is_file() and self._new(diagnosis):
            self.experiment.log_artifact(self.run_id, str(diagnosis))
        if self.log_best_model and self._checkpoint is not None:
            self._log_best_checkpoint()
        if not self._hint_shown:
            print(self._where())
            self._hint_shown = True

    def _log_best_checkpoint(self) -> None:
        ckpt = self._checkpoint
        path = Path(ckpt.best_model_path or ckpt.last_model_path or ".")
        if not path.is_file() or not self._new(path):
            return
        score = ckpt.best_model_score
        tags = {
            "checkpoint": str(path),
            "monitor": str(ckpt.monitor),
            "score": "" if score is None else str(float(score)),
        }
        client = self.experiment
        model = client.create_logged_model(
            self.experiment_id, name=path.stem, source_run_id=self.run_id, tags=tags, model_type="lightning-checkpoint"
        )
        client.log_model_artifact(model.model_id, str(path))
        client.finalize_logged_model(model.model_id, "READY")

    def _new(self, path: Path) -> bool:
        """Whether ``path`` changed since it was last logged (and note it as logged now)."""
        mtime = path.stat().st_mtime
        if self._uploaded.get(str(path)) == mtime:
            return False
        self._uploaded[str(path)] = mtime
        return True

    def _where(self) -> str:
        uri = self.tracking_uri
        if not uri.startswith(("sqlite:", "file:")) and "://" in uri:
            return f"MLflow run {self.run_id} logged to {uri} (experiment {self.experiment_name})"
        ui = "" if _installed("mlflow") else "\n(the UI comes with the full package: pip install mlflow)"
        return f"MLflow run {self.run_id} logged to {uri}. See it with:\n  mlflow ui --backend-store-uri {uri}{ui}"


# --- TensorBoard -----------------------------------------------------------------------------------------------
class TensorBoardLogger(_LightningTensorBoardLogger):
    """TensorBoard event files in the run's own folder (``<save_dir>/<name>/version_<n>/``, beside its checkpoints,
    config and metrics). See them with ``tensorboard --logdir runs``.

    They hold every metric as scalars; the resolved config as hyperparameters (the HPARAMS tab, flattened keys, each
    run's last value of every scalar beside them) and as text; the run's pictures as images; and histograms of
    every parameter's weights and gradients at each epoch's end.

    Args:
        save_dir: the folder of the run folders.
        name: the experiment's folder under ``save_dir``.
        version: the run folder's name (a number n: ``version_<n>``); empty: the next free number.
        log_graph: add the model's graph (needs the task's ``example_input_array``).
        prefix: put before every metric name.
        sub_dir: write the event files into this folder of the run folder.
    """

    def __init__(
        self,
        save_dir: str = "runs",
        name: str = "zoo",
        version: Optional[Union[int, str]] = None,
        log_graph: bool = False,
        prefix: str = "",
        sub_dir: Optional[str] = None,
    ) -> None:
        require("tensorboard", "TensorBoard")
        # No placeholder hp_metric: the HPARAMS tab shows the run's own scalars beside the config.
        super().__init__(
            save_dir,
            name=name,
            version=version,
            log_graph=log_graph,
            default_hp_metric=False,
            prefix=prefix,
            sub_dir=sub_dir,
        )
        self._hint_shown = False

    @rank_zero_only
    def log_resolved_config(self, config_yaml: str) -> None:
        """The CLI's resolved config (YAML text) as the run's hyperparameters, flattened, and as text."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: v for k, v in flat_config(yaml.safe_load(config_yaml) or {}).items()}
        # The session start alone: without an experiment summary, TensorBoard lists every scalar as a metric.
        _, session_start, _ = hparams(params, {})
        self.experiment.file_writer.add_summary(session_start)
        self.experiment.add_text("config", "".join(f"    {line}\n" for line in config_yaml.splitlines()))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success" and not self._hint_shown:
            print(f"TensorBoard logs in {self.log_dir}. See them with:\n  tensorboard --logdir {self.root_dir}")
            self._hint_shown = True


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True
