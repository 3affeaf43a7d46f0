"""ZooCLI: LightningCLI with the zoo's defaults, checks and error messages, behind `zoo fit | validate | test |
predict` (``cli.py`` dispatches to it only for those, so `zoo --help` and the other commands start without
importing Lightning)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Literal, Optional, Union

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichModelSummary,
)
from lightning.pytorch.callbacks.model_summary import ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO

from datamodules.base import ZooDataModule
from zoo.arguments import RawHelp, ZooArgumentParser
from zoo.callbacks.checkpointing import ZooCheckpoint
from zoo.callbacks.finetuning import FineTuning
from zoo.callbacks.monitoring import GradNormMonitor, StopOnNonFinite, ZooEarlyStopping
from zoo.callbacks.pictures import RunPictures
from zoo.callbacks.progress import ZooProgressBar
from zoo.budget import MIN_VAL_SAMPLES, plan
from zoo.checkpoints import (
    AtomicCheckpointIO,
    classes_named,
    read_checkpoint,
    remove_stale_partials,
    run_folder,
    task_class,
)
from zoo.commands import DESCRIPTION
from zoo.errors import ConfigError, ZooError
from zoo.resume import (
    as_dict,
    check_same_experiment,
    checkpoint_folders,
    config_value,
    resolve_last_checkpoint,
)
from zoo.tasks.base import ZooTask


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's defaults: data facts linked into the model, default callbacks,
    a local CSV logger, metrics written as JSON, and clear errors for bad configs."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
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
            "folder, and as images in W&B (zoo.callbacks.pictures.RunPictures); false to skip",
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

    # --- instantiation ---------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Like LightningCLI's (the checkpoint's model hyperparameters enter the config), but the file is read as
        data (:func:`zoo.checkpoints.read_checkpoint`), ``--ckpt_path last`` is this config's own newest
        checkpoint, a fit resumes only the experiment it was trained as, and ``trust_remote_code`` stays what
        the user's own config says."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if subcommand == "fit":
            removed = [p for folder in checkpoint_folders(config)[0] for p in remove_stale_partials(folder)]
            if removed:
                print(f"removed {len(removed)} partial checkpoint file(s) that killed writes left, e.g. {removed[0]}",
                      file=sys.stderr)  # fmt: skip
        try:
            if config.get("ckpt_path") == "last":
                config["ckpt_path"] = resolve_last_checkpoint(config, fresh_if_none=subcommand == "fit")
            path = config.get("ckpt_path")
            if not path or path in ("best", "hpc") or "://" in str(path):
                return
            ckpt = read_checkpoint(str(path), mmap=True, trusted=classes_named(as_dict(config)))
            hparams = dict(ckpt.get("hyper_parameters") or {})
            if "_class_path" in hparams:
                task_class(ckpt, str(path))
            if subcommand == "fit":
                check_same_experiment(ckpt, str(path), as_dict(config))
        except ZooError as err:
            self._parser(subcommand).error(str(err))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        own = config_value(config, "model.init_args.backbone_kwargs.trust_remote_code")
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        if own:  # the user's own word, which the checkpoint's stored (and refused) value must not replace
            self.config[subcommand]["model"]["init_args"]["backbone_kwargs"]["trust_remote_code"] = own

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        model_args = (config.get("model") or {}).get("init_args")
        if config.get("ckpt_path") and model_args is not None and model_args.get("pretrained") is not False:
            # The checkpoint holds every weight: rebuilding the network must not fetch pretrained ones first
            # (they may not be on this machine at all).
            from zoo.registry import split_source

            if split_source(str(model_args.get("backbone")))[0] is not None:
                model_args["pretrained"] = False
        if self.subcommand == "fit" and config.get("ckpt_path"):
            from zoo.loggers import continue_stored_run

            continue_stored_run(config)  # a resumed fit continues the checkpoint's W&B run
        try:
            follow_backbone_preprocessing(config)
        except ZooError as err:
            self._parser(self.subcommand).error(str(err))

    def instantiate_classes(self) -> None:
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
            self._parser(self.subcommand).error(str(err))
        found = self.datamodule.num_classes if self.datamodule is not None else None
        if asked is not None and found is not None and asked != found:
            source = "the checkpoint's model" if config.get("ckpt_path") else "model.num_classes"
            self._parser(self.subcommand).error(
                f"{source} has {asked} classes but the data ({type(self.datamodule).__name__}) has {found}; "
                "drop model.num_classes (it is linked from the data) or use data with matching classes"
            )
        shape = tuple(self.datamodule.input_shape) if self.datamodule is not None and config.get("ckpt_path") else None
        if asked_shape is not None and shape is not None and tuple(asked_shape) != shape:
            # e.g. a colour model given greyscale images: the weights would not fit (the first layer's channels).
            self._parser(self.subcommand).error(
                f"the checkpoint's model takes inputs of shape {tuple(asked_shape)} but the data "
                f"({type(self.datamodule).__name__}) gives {shape}; use the data settings it was trained with "
                "(channels, image_size, ...)"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if self.subcommand == "fit" and isinstance(self.datamodule, ZooDataModule):
            self._plan_training(trainer_config)
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        user = trainer_config.get("callbacks") or []
        user = user if isinstance(user, list) else [user]
        if _has(user, FineTuning):  # the user's own schedule in trainer.callbacks replaces the finetuning group
            callbacks = [c for c in callbacks if not isinstance(c, FineTuning)]
        # Rich progress and summary by default, unless turned off or replaced by the user's own.
        if trainer_config.get("enable_progress_bar", True) is not False and not _has(user, ProgressBar):
            callbacks.append(ZooProgressBar())
        if trainer_config.get("enable_model_summary", True) is not False and not _has(user, ModelSummary):
            callbacks.append(RichModelSummary(max_depth=1))
        if _has([*user, *callbacks], ModelSummary):  # else Lightning logs on every run that it skips its own
            trainer_config["enable_model_summary"] = False
        logged = trainer_config.get("logger") not in (None, False)
        if logged and not _has(user, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if logged and not _has(user, GradNormMonitor):
            callbacks.append(GradNormMonitor())
        if trainer_config.get("limit_val_batches") == 0:
            callbacks = _without_validation(callbacks)
        if not _has(user, StopOnNonFinite):
            callbacks.append(StopOnNonFinite())
        # The run's pictures by default where there is a run folder (a logger), unless turned off or the user's own.
        wants_pictures = self._get(self.config_init, "pictures", True) is not False
        if wants_pictures and logged and not _has(user, RunPictures):
            callbacks.append(RunPictures())
        _check_precision(trainer_config)
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # whole files or none, read without running code
            own = classes_named(as_dict(self.config.get(str(self.subcommand), self.config)))
            trainer_config["plugins"] = [*plugins, AtomicCheckpointIO(trusted=own)]
        try:
            return self._instantiate_trainer(trainer_config, callbacks)
        except (MisconfigurationException, ModuleNotFoundError, ValueError) as err:
            # Hardware the run asks for and this machine lacks (accelerator, devices, precision plugins).
            self._parser(self.subcommand).error(f"the trainer settings cannot run here: {err}")

    def _plan_training(self, trainer_config: dict[str, Any]) -> None:
        """The step budget and the model selection for this data (zoo.budget), applied to the datamodule and the
        trainer settings, with the reasons printed before training."""
        datamodule = self.datamodule
        train_size, val_size = datamodule.split_sizes()
        if trainer_config.get("limit_val_batches") == 0:
            val_size = 0  # validation is off: nothing to select on
        devices, nodes = trainer_config.get("devices"), trainer_config.get("num_nodes") or 1
        processes = devices * nodes if isinstance(devices, int) and devices > 0 else nodes
        try:
            decided = plan(
                train_size, val_size, datamodule.batch_size, self._get(self.config, "steps"),
                self._get(self.config, "selection", "auto"), processes=processes,
                accumulate=trainer_config.get("accumulate_grad_batches") or 1,
                max_epochs=trainer_config.get("max_epochs"), max_steps=trainer_config.get("max_steps") or -1,
            )  # fmt: skip
        except ZooError as err:
            self._parser(self.subcommand).error(str(err))
        datamodule.batch_size = decided.batch_size
        if decided.steps is not None:
            trainer_config["max_steps"], trainer_config["max_epochs"] = decided.steps, decided.epochs
        if decided.selection == "last":
            datamodule.join_validation()
            trainer_config["limit_val_batches"] = 0
        for note in decided.notes:
            print(note, file=sys.stderr)

    # --- after each command ----------------------------------------------------------------------
    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", True) or self.datamodule is None:
            return
        if self.trainer.interrupted:
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
        if ckpt_path is None and ckpt is not None and ckpt.monitor:
            print(f"testing the last weights: no best checkpoint by {ckpt.monitor} (it was never logged)",
                  file=sys.stderr)  # fmt: skip
        _warn_first_epoch_best(self.trainer)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("val")

    def after_test(self) -> None:
        self._write_metrics("test")

    def _write_metrics(self, stage: str) -> None:
        if not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        baselines, compared = {}, ""
        if stage == "test" and self._get(self.config, "baseline", True):
            from zoo.baselines import baselines_of_run

            baselines, compared = baselines_of_run(self.trainer, self.model, self.datamodule, metrics)
        out_dir = run_folder(self.trainer)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stage}_metrics.json"
        path.write_text(json.dumps({**metrics, **baselines}, indent=2, sort_keys=True) + "\n")
        summary = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print("\n".join(line for line in (summary, compared, f"metrics written to {path}") if line))


class ZooSaveConfig(SaveConfigCallback):
    """Saves the resolved config into the run's own folder and hands it to every logger that takes it."""

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
        from zoo.checkpoints import CONFIG_KEY
        from zoo.loggers import store_run_id

        checkpoint[CONFIG_KEY] = self._yaml()
        store_run_id(trainer, checkpoint)  # so `zoo fit --ckpt_path` continues the same W&B run

    def _yaml(self) -> str:
        """The resolved config as YAML, dumped once per run (~60 ms), for the loggers and every checkpoint."""
        if getattr(self, "_config_yaml", None) is None:
            self._config_yaml = self.parser.dump(self.config, skip_none=False, format="yaml")
        return self._config_yaml


# What a pretrained backbone's preprocessing sets in the datamodule, where the user left it unset (None).
_FOLLOWED = ("mean", "std", "tokenizer")


def follow_backbone_preprocessing(config: Any) -> dict[str, Any]:
    """Fill the datamodule's unset ``mean`` / ``std`` / ``image_size`` / ``channels`` / ``tokenizer`` from
    the model's pretrained backbone, so a config never repeats them. Returns what was set."""
    model, data = config.get("model"), config.get("data")
    model_args = model.get("init_args") if model is not None else None
    backbone = model_args.get("backbone") if model_args is not None else None
    if data is None or not isinstance(backbone, str) or "/" not in backbone:
        return {}
    from zoo.backbones.pretrained import preprocessing_of
    from zoo.registry import split_source

    if split_source(backbone)[0] is None:
        return {}
    kwargs = dict(model_args.get("backbone_kwargs") or {})
    wanted = preprocessing_of(backbone, **kwargs)
    values = {key: wanted[key] for key in _FOLLOWED if wanted.get(key) is not None}
    if wanted.get("input_size"):
        channels, height, width = wanted["input_size"]
        values["channels"] = channels
        values["image_size"] = height if height == width else None
    init_args = data.get("init_args")
    applied = {}
    for key, value in values.items():
        if value is not None and init_args is not None and key in init_args and init_args[key] is None:
            init_args[key] = list(value) if isinstance(value, tuple) else value
            applied[key] = init_args[key]
    if applied:
        shown = ", ".join(f"{k}={v}" for k, v in applied.items())
        print(f"data: {shown} from {backbone}'s preprocessing", file=sys.stderr)
    return applied


def zoo_error_in(exc: BaseException) -> Optional[ZooError]:
    """The first ZooError in an exception's chain of causes, if any."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ZooError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _without_validation(callbacks: list[Any]) -> list[Any]:
    """With ``limit_val_batches=0`` nothing logs ``val/*``: early stopping on it goes, checkpoints keep the last."""
    kept = []
    for callback in callbacks:
        monitor = str(getattr(callback, "monitor", None) or "")
        if isinstance(callback, EarlyStopping) and monitor.startswith("val/"):
            print(f"no validation (limit_val_batches=0): early stopping on {monitor} is off", file=sys.stderr)
            continue
        if isinstance(callback, ModelCheckpoint) and monitor.startswith("val/"):
            callback.monitor, callback.save_top_k = None, 1  # one checkpoint, the latest (plus last.ckpt)
        kept.append(callback)
    return kept


def _warn_first_epoch_best(trainer: Trainer) -> None:
    """A best checkpoint from the first of several epochs: nothing after it improved the monitored metric."""
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None and getattr(ckpt, "monitor", None) else ""
    if best and trainer.current_epoch > 1 and os.path.basename(best).startswith("best-epoch=0-"):
        print(
            f"warning: the best checkpoint by {ckpt.monitor} is from the first epoch of {trainer.current_epoch}: "  # type: ignore[union-attr]
            "training did not improve on it. The learning rate may be too high (zoo lr-find), or the validation "
            "split too small or unlike the training data to select on (--selection last)",
            file=sys.stderr,
        )


def _check_precision(trainer_config: dict[str, Any]) -> None:
    """Precisions that cannot train on the chosen device, named before anything runs."""
    precision = str(trainer_config.get("precision") or "32-true")
    accelerator = str(trainer_config.get("accelerator") or "auto")
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and precision in ("16-true", "16", "half"):
        # It runs, but CPUs have no float16 loss scaling: the digits CNN's loss is NaN within 2 epochs.
        raise ConfigError(
            f"trainer.precision={precision!r} trains the whole model in float16 without loss scaling, which "
            "diverges on CPU; use 'bf16-mixed' (or 'bf16-true') on CPU, '16-mixed' on a GPU, or '32-true'"
        )


def end_distributed() -> None:
    """Destroys the process group a distributed run set up, while the interpreter is still whole.

    Lightning destroys NCCL groups at exit but leaves gloo ones to interpreter shutdown, where gloo's worker
    threads can still hold tensors whose release needs the GIL, and the process aborts (SIGABRT) after a
    successful run. Called after a run that finished: destroying is local, so no peer is waited for.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_died(exc: BaseException) -> bool:
    """Whether a distributed collective failed because another process is gone (killed, crashed, OOM)."""
    import torch.distributed as dist

    said = str(exc)
    gone = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "has been killed")
    return isinstance(exc, getattr(dist, "DistError", ())) or any(g in said for g in gone)


def _has(callbacks: list[Any], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)
