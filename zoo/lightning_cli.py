"""ZooCLI: LightningCLI with the zoo's defaults, checks and error messages, behind `zoo fit | validate | test |
predict` (``cli.py`` dispatches to it only for those, so `zoo --help` and the other commands start without
importing Lightning). It adapts the plain functions of :mod:`zoo.run` to LightningCLI's hooks: the config's
arguments and links are declared here, every check and default is one of those functions."""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Union

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from datamodules.base import ZooDataModule
from zoo.arguments import RawHelp, ZooArgumentParser
from zoo.budget import MIN_VAL_SAMPLES
from zoo.callbacks.checkpointing import ZooCheckpoint
from zoo.callbacks.feature_cache import FeatureCache
from zoo.callbacks.finetuning import FineTuning
from zoo.callbacks.monitoring import ZooEarlyStopping
from zoo.checkpoints import CONFIG_KEY, classes_named
from zoo.commands import DESCRIPTION
from zoo.compat import CheckpointPathHook, config_get, instantiate_trainer, subcommand_parser
from zoo.errors import ZooError, zoo_error_in
from zoo.loggers import continue_stored_run, store_run_id
from zoo.resume import as_dict, config_value
from zoo.run.callbacks import default_callbacks, default_plugins
from zoo.run.files import run_folder
from zoo.run.outputs import diagnose_after_fit, test_after_fit, write_metrics
from zoo.run.preflight import (
    apply_budget,
    budget_for,
    check_data_matches,
    check_precision,
    check_sharded_freezing,
    checkpoint_hparams,
    follow_backbone_preprocessing,
    skip_pretrained_weights,
)
from zoo.tasks.base import ZooTask


class ZooCLI(CheckpointPathHook, LightningCLI):
    """LightningCLI with the zoo's defaults: data facts linked into the model, default callbacks,
    a local CSV logger, metrics written as JSON, and clear errors for bad configs."""

    config: Namespace  # LightningCLI's parsed config; parse_checkpoint_path replaces it

    def __init__(self, args: Any = None, run: bool = True, instantiate: bool = True, **kwargs: Any) -> None:
        self.instantiate = instantiate  # False (with run=False): parse and resolve only (zoo.run.build.parse)
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"].setdefault("default_root_dir", "runs")
        kwargs["trainer_defaults"].setdefault(
            "logger", {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}}
        )
        super().__init__(
            ZooTask,
            ZooDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # tasks build their own named parameter groups
            parser_class=ZooArgumentParser,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": RawHelp},
            save_config_kwargs={"overwrite": True},
            save_config_callback=ZooSaveConfig,
            seed_everything_default=42,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Facts about the data reach the model here, so a config never states them twice.
        for source, target in (
            ("num_classes", "num_classes"),
            ("input_shape", "input_shape"),
            ("vocab_size", "vocab_size"),
            ("categories", "categories"),
            ("num_targets", "num_targets"),
            ("target_mean", "target_mean"),
            ("target_std", "target_std"),
        ):
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.add_lightning_class_args(ZooCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch={epoch}-step={step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(FineTuning, "finetuning")
        parser.add_lightning_class_args(FeatureCache, "feature_cache")
        parser.add_lightning_class_args(ZooEarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 10})
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: test the best checkpoint when training ends and write its metrics as JSON",
        )
        parser.add_argument(
            "--steps",
            type=Optional[Union[int, Literal["auto"]]],
            default=None,
            help="fit only: the training budget in optimizer steps, or 'auto' (10 epochs, within 1,000-10,000 "
            "steps); the epochs follow from the data's size and the batch size is capped so an epoch has 4 steps "
            "or more (zoo.budget). Unset: trainer.max_epochs / max_steps as given",
        )
        parser.add_argument(
            "--selection",
            type=Literal["auto", "best", "last"],
            default="auto",
            help="fit only: the weights tested after training. 'best': the checkpoint with the best val/loss; "
            "'last': the validation split joins the training data and the last weights are kept; 'auto': "
            f"'best' from {MIN_VAL_SAMPLES} validation samples up, else 'last' (zoo.budget)",
        )
        parser.add_argument(
            "--pictures",
            type=bool,
            default=True,
            help="draw learning curves, learning rates and the test confusion matrix as PNG files into the run "
            "folder, and as images in the run's trackers: W&B, MLflow, TensorBoard "
            "(zoo.callbacks.pictures.RunPictures); false to skip",
        )
        parser.add_argument(
            "--diagnose",
            type=bool,
            default=True,
            help="fit only: record per-layer gradient norms, update ratios and activation statistics on logging "
            "steps (layer_stats.csv, zoo.callbacks.layer_stats.LayerStats) and diagnose the run when it ends: a "
            "summary, diagnosis.json and the loggers (zoo diagnose RUN_DIR); false to skip",
        )
        parser.add_argument(
            "--baseline",
            type=bool,
            default=True,
            help="test only (and fit's test): also fit strong cheap baselines on the same splits (majority / mean, "
            "boosted trees, MiniRocket, TF-IDF or pixel regression by the kind of data, a linear probe of a "
            "pretrained backbone), write them into test_metrics.json and say whether the model beats them "
            "(zoo.baselines); false to skip",
        )

    # --- instantiation: each step is a plain function of zoo.run ------------------------------------
    def parse_checkpoint_path(self) -> None:
        """Like LightningCLI's (the checkpoint's model hyperparameters enter the config), but the file is read as
        data, ``--ckpt_path last`` is this config's own newest checkpoint, a fit resumes only the experiment it
        was trained as (:func:`zoo.run.preflight.checkpoint_hparams`), and ``trust_remote_code`` stays what the
        user's own config says."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        try:
            hparams = checkpoint_hparams(config, subcommand)
        except ZooError as err:
            subcommand_parser(self, subcommand).error(str(err))
        if not hparams:
            return
        own = config_value(config, "model.init_args.backbone_kwargs.trust_remote_code")
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        if own:  # the user's own word, which the checkpoint's stored (and refused) value must not replace
            self.config[subcommand]["model"]["init_args"]["backbone_kwargs"]["trust_remote_code"] = own

    def before_instantiate_classes(self) -> None:
        if not self.instantiate:
            return
        config = self.config.get(str(self.subcommand), self.config)
        skip_pretrained_weights(config)
        if self.subcommand == "fit" and config.get("ckpt_path"):
            continue_stored_run(config)  # a resumed fit continues the checkpoint's W&B run
        try:
            follow_backbone_preprocessing(config)
        except ZooError as err:
            subcommand_parser(self, self.subcommand).error(str(err))

    def instantiate_classes(self) -> None:
        if not self.instantiate:
            return
        config = self.config.get(str(self.subcommand), self.config)
        model_args = (config.get("model") or {}).get("init_args") or {}
        asked, asked_shape = model_args.get("num_classes"), model_args.get("input_shape")
        try:
            super().instantiate_classes()
        except Exception as exc:
            # jsonargparse wraps a constructor's error in its own; the zoo's message is the useful one.
            err = zoo_error_in(exc)
            if err is None:
                raise
            subcommand_parser(self, self.subcommand).error(str(err))
        try:
            check_data_matches(asked, asked_shape, self.datamodule, bool(config.get("ckpt_path")))
        except ZooError as err:
            subcommand_parser(self, self.subcommand).error(str(err))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**config_get(self, self.config_init, "trainer", default={}), **kwargs}
        if self.subcommand == "fit" and isinstance(self.datamodule, ZooDataModule):
            sizes = self.datamodule.split_sizes()
            try:
                decided = budget_for(
                    sizes,
                    self.datamodule.batch_size,
                    trainer_config,
                    config_get(self, self.config, "steps"),
                    config_get(self, self.config, "selection", "auto"),
                )
            except ZooError as err:
                subcommand_parser(self, self.subcommand).error(str(err))
            apply_budget(decided, self.datamodule, trainer_config)
        parser = subcommand_parser(self, self.subcommand)
        configured = [config_get(self, self.config_init, key) for key in parser.callback_keys]
        pictures = config_get(self, self.config_init, "pictures", True) is not False
        diagnose = config_get(self, self.config_init, "diagnose", True) is not False
        callbacks = default_callbacks(configured, trainer_config, pictures, diagnose)
        check_precision(trainer_config)
        user = trainer_config.get("callbacks") or []
        check_sharded_freezing(
            trainer_config.get("strategy"), [*callbacks, *(user if isinstance(user, list) else [user])]
        )
        default_plugins(trainer_config, classes_named(as_dict(self.config.get(str(self.subcommand), self.config))))
        try:
            return instantiate_trainer(self, trainer_config, callbacks)
        except (MisconfigurationException, ModuleNotFoundError, ValueError) as err:
            # Hardware the run asks for and this machine lacks (accelerator, devices, precision plugins).
            subcommand_parser(self, self.subcommand).error(f"the trainer settings cannot run here: {err}")

    # --- after each command ----------------------------------------------------------------------
    def after_fit(self) -> None:
        if config_get(self, self.config, "test_after_fit", True) and self.datamodule is not None:
            test_after_fit(self.trainer, self.model, self.datamodule, self._baseline())
        if config_get(self, self.config, "diagnose", True) and not self.trainer.interrupted:
            diagnose_after_fit(self.trainer)

    def after_validate(self) -> None:
        write_metrics(self.trainer, self.model, self.datamodule, "val", self._baseline())

    def after_test(self) -> None:
        write_metrics(self.trainer, self.model, self.datamodule, "test", self._baseline())

    def _baseline(self) -> bool:
        return bool(config_get(self, self.config, "baseline", True))


class ZooSaveConfig(SaveConfigCallback):
    """Saves the resolved config into the run's own folder and hands it to every logger that takes it."""

    already_saved: bool  # SaveConfigCallback's

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        # Lightning writes into trainer.log_dir, which for W&B is the shared save_dir: every run overwrote
        # runs/config.yaml. The run folder is where its checkpoints and metrics go.
        folder = trainer.strategy.broadcast(run_folder(trainer))
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = trainer.strategy.broadcast(True)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            log_config = getattr(logger, "log_resolved_config", None)
            if callable(log_config):
                log_config(self._yaml())

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Every checkpoint carries its resolved config: `zoo predict / export / report` need only its path.
        checkpoint[CONFIG_KEY] = self._yaml()
        store_run_id(trainer, checkpoint)  # so `zoo fit --ckpt_path` continues the same W&B run

    def _yaml(self) -> str:
        """The resolved config as YAML, dumped once per run (~60 ms), for the loggers and every checkpoint."""
        if getattr(self, "_config_yaml", None) is None:
            self._config_yaml = self.parser.dump(self.config, skip_none=False, format="yaml")
        return self._config_yaml
