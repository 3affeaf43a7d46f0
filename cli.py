"""The `zoo` command: LightningCLI for fit / validate / test / predict, plus the zoo's own commands.

`zoo` (the console script) and `python cli.py` are the same program.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.callbacks.model_summary import ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from datamodules.base import ZooDataModule
from zoo.callbacks.finetuning import FineTuning
from zoo.callbacks.pictures import RunPictures
from zoo.errors import ConfigError, ZooError
from zoo.tasks.base import ZooTask

EXTRA_COMMANDS = {
    "models": "list backbones: zoo models [PATTERN], e.g. 'res*', 'timm/*convnext*'",
    "groups": "a backbone's layer groups and a fine-tuning schedule: zoo groups resnet18 --strategy progressive",
    "tune": "hyperparameter search with Optuna: zoo tune --config CONFIG --search SPACE.yaml",
    "export": "ONNX, torch.export, safetensors and a model card: zoo export --ckpt_path X",
    "report": "learning curves and confusion matrix as PNG: zoo report RUN_DIR",
    "lr-find": "learning-rate range test, plot and a config with the suggested LR: zoo lr-find --config CONFIG",
}
# Commands implemented in zoo/commands/<name>.py, each a main(argv) imported only when used.
COMMAND_MODULES = {
    "groups": "zoo.commands.groups",
    "tune": "zoo.commands.tune",
    "export": "zoo.commands.export",
    "report": "zoo.commands.report",
    "lr-find": "zoo.commands.lr_find",
}

DESCRIPTION = """Train, evaluate and use the zoo's models from YAML configs.

  zoo fit --config configs/experiments/digits_cnn.yaml
  zoo fit --data configs/data/digits.yaml --model configs/model/cnn.yaml --trainer.max_epochs 5
  zoo test --config configs/experiments/digits_cnn.yaml --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt
  zoo predict --ckpt_path runs/digits_cnn/version_0/checkpoints/last.ckpt examples/digits --output predictions.csv

Zoo commands beside fit / validate / test / predict:
""" + "\n".join(f"  {name:8s} {help}" for name, help in EXTRA_COMMANDS.items())


class ZooArgumentParser(LightningArgumentParser):
    """The CLI's parser: errors are one short message with close matches, not the whole usage text."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's inner parsers raise, and their callers try alternatives
            super().error(message, ex)
        hint = _close_match_hint(message)
        sys.stderr.write(f"zoo: error: {message.strip()}{hint}\nRun with --help to see the accepted keys.\n")
        sys.exit(2)


def _close_match_hint(message: str) -> str:
    """'Did you mean ...' for jsonargparse's unknown-key messages, from the keys that place accepts."""
    found = re.search(r"(?:Group '([\w.]+)' does not accept option|[Oo]ption) '([\w.]+)'", message)
    if not found:
        return ""
    group, key = found.group(1) or "", found.group(2)
    if "." in key:
        group, key = key.rsplit(".", 1)
    candidates: set[str] = set()
    for cls_path in re.findall(r"class_path '([\w.]+)'", message):
        candidates |= _init_params(cls_path)
    known = {
        "trainer": Trainer, "checkpoint": ModelCheckpoint, "early_stopping": EarlyStopping, "finetuning": FineTuning
    }  # fmt: skip
    if group.split(".")[-1] in known:
        candidates |= _params_of(known[group.split(".")[-1]])
    close = difflib.get_close_matches(key, sorted(candidates), n=3, cutoff=0.6)
    return f"\n  Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _params_of(obj: Any) -> set[str]:
    try:
        return set(inspect.signature(obj).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


def _init_params(class_path: str) -> set[str]:
    module, _, name = class_path.rpartition(".")
    try:
        return _params_of(getattr(__import__(module, fromlist=[name]), name))
    except (ImportError, AttributeError):
        return set()


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
            parser_kwargs={"description": DESCRIPTION, "formatter_class": _RawHelp},
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
            ("num_targets", "num_targets"),
            ("target_mean", "target_mean"),
            ("target_std", "target_std"),
        ):
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 10})
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: test the best checkpoint when training ends and write its metrics as JSON",
        )
        parser.add_argument(
            "--pictures",
            type=bool,
            default=True,
            help="draw learning curves, learning rates and the test confusion matrix as PNG files into the run "
            "folder, and as images in W&B (zoo.callbacks.pictures.RunPictures); false to skip",
        )

    # --- instantiation ---------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        model_args = (config.get("model") or {}).get("init_args")
        if config.get("ckpt_path") and model_args is not None and model_args.get("pretrained") is not False:
            # The checkpoint holds every weight: rebuilding the network must not fetch pretrained ones first
            # (they may not be on this machine at all).
            from zoo.registry import split_source

            if split_source(str(model_args.get("backbone")))[0] is not None:
                model_args["pretrained"] = False
        try:
            follow_backbone_preprocessing(config)
        except ZooError as err:
            self._parser(self.subcommand).error(str(err))

    def instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        asked = (config.get("model") or {}).get("init_args", {}).get("num_classes")
        try:
            super().instantiate_classes()
        except Exception as exc:
            # jsonargparse wraps a constructor's error in its own; the zoo's message is the useful one.
            err = _zoo_error_in(exc)
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

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        user = trainer_config.get("callbacks") or []
        user = user if isinstance(user, list) else [user]
        if _has(user, FineTuning):  # the user's own schedule in trainer.callbacks replaces the finetuning group
            callbacks = [c for c in callbacks if not isinstance(c, FineTuning)]
        # Rich progress and summary by default, unless turned off or replaced by the user's own.
        if trainer_config.get("enable_progress_bar", True) is not False and not _has(user, ProgressBar):
            callbacks.append(RichProgressBar())
        if trainer_config.get("enable_model_summary", True) is not False and not _has(user, ModelSummary):
            callbacks.append(RichModelSummary(max_depth=1))
        if trainer_config.get("logger") not in (None, False) and not _has(user, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        # The run's pictures by default where there is a run folder (a logger), unless turned off or the user's own.
        wants_pictures = self._get(self.config_init, "pictures", True) is not False
        if wants_pictures and trainer_config.get("logger") not in (None, False) and not _has(user, RunPictures):
            callbacks.append(RunPictures())
        return self._instantiate_trainer(trainer_config, callbacks)

    # --- after each command ----------------------------------------------------------------------
    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", True) or self.datamodule is None:
            return
        if self.trainer.interrupted:
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
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
        out_dir = self._run_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stage}_metrics.json"
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        summary = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"{summary}\nmetrics written to {path}")


    def _run_dir(self) -> Path:
        """The run's own folder: where its checkpoints folder is, else the logger's directory."""
        ckpt = self.trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            return Path(ckpt.dirpath).parent
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)


class ZooSaveConfig(SaveConfigCallback):
    """Saves the resolved config beside the logs and hands it to the logger as the run's config."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        log_config = getattr(trainer.logger, "log_resolved_config", None)
        if callable(log_config):
            log_config(self.parser.dump(self.config, skip_none=False, format="yaml"))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Every checkpoint carries its resolved config: `zoo predict / export / report` need only its path.
        from zoo.checkpoints import CONFIG_KEY

        checkpoint[CONFIG_KEY] = self.parser.dump(self.config, skip_none=False, format="yaml")


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


def _zoo_error_in(exc: BaseException) -> Optional[ZooError]:
    """The first ZooError in an exception's chain of causes, if any."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ZooError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _has(callbacks: list[Any], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


class _RawHelp(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the description's examples on their own lines."""


def list_models(pattern: str = "*") -> None:
    """Print every registered backbone matching ``pattern``: name, family, parameters, input kind."""
    from rich.console import Console
    from rich.table import Table

    from zoo.registry import get_backbone_entry, list_backbones

    names = list_backbones(pattern)
    if not names:
        raise ConfigError(f"no registered backbone matches {pattern!r}; run `zoo models` to see them all")
    table = Table(title=f"zoo backbones matching {pattern!r}")
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("description")
    for name in names:
        entry = get_backbone_entry(name)
        params = entry.num_params()
        summary = re.split(r"[;:]", entry.description)[0].rstrip(".")  # the first clause is enough here
        table.add_row(name, entry.family, f"{params:,}", entry.input_kind, summary)
    Console().print(table)
    print("Parameter counts are for each backbone's default input shape; the head is not included.")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Dotted config overrides (``--finetuning.strategy=x`` or ``--trainer.max_epochs 5``) and the rest."""
    overrides, rest = [], []
    tokens = iter(argv)
    for token in tokens:
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            overrides.append(token)
            if "=" not in token:
                overrides.append(next(tokens, ""))
        else:
            rest.append(token)
    return overrides, rest


def _show_zoo_logs() -> None:
    """The zoo's own INFO messages (weights loaded, heads re-initialised, ...) on stderr, once."""
    import logging

    zoo_logger = logging.getLogger("zoo")
    if not zoo_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("zoo: %(message)s"))
        zoo_logger.addHandler(handler)
        zoo_logger.setLevel(logging.INFO)
        zoo_logger.propagate = False


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the `zoo` console script and of `python cli.py`."""
    argv = sys.argv[1:] if args is None else list(args)
    _show_zoo_logs()
    try:
        if argv and argv[0] == "models":
            if len(argv) > 2 or any(a.startswith("-") for a in argv[1:]):
                sys.stderr.write("usage: zoo models [PATTERN]\n")
                sys.exit(2)
            list_models(argv[1] if len(argv) > 1 else "*")
            return
        if argv and argv[0] in COMMAND_MODULES:
            import importlib

            importlib.import_module(COMMAND_MODULES[argv[0]]).main(argv[1:])
            return
        if argv and argv[0] == "predict" and "--config" not in argv and "-c" not in argv:
            from zoo.commands.predict import main as predict_files  # new data -> CSV, from the checkpoint alone

            predict_files(argv[1:])
            return
        ZooCLI(args=args)
    except Exception as exc:
        err = _zoo_error_in(exc)
        if err is None:
            raise
        sys.stderr.write(f"zoo: error: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
