"""Every check and decision before training: what a checkpoint given as ``--ckpt_path`` brings into the config,
the pretrained backbone's preprocessing followed by the data, classes and input shape that must agree, a
precision the device can train in, a sharded strategy a fine-tuning schedule can freeze parts of, and the training
budget (zoo.budget). Each raises a ZooError with the fix;
:class:`zoo.lightning_cli.ZooCLI` reports it as a command-line error."""

from __future__ import annotations

import sys
from typing import Any, Optional

from zoo.budget import Plan, Selection, plan
from zoo.callbacks.finetuning import FineTuning
from zoo.checkpoints import classes_named, read_checkpoint, task_class
from zoo.errors import ConfigError
from zoo.registry import split_source
from zoo.resume import as_dict, check_same_experiment, checkpoint_folders, resolve_last_checkpoint
from zoo.run.files import remove_stale_partials

# What a pretrained backbone's preprocessing sets in the datamodule, where the user left it unset (None).
FOLLOWED = ("mean", "std", "tokenizer")


def checkpoint_hparams(config: Any, subcommand: str) -> dict[str, Any]:
    """The model settings a subcommand's ``ckpt_path`` brings into its ``config`` (as LightningCLI's own: the
    checkpoint's model hyperparameters), read as data (:func:`zoo.checkpoints.read_checkpoint`).

    ``ckpt_path: last`` becomes this config's own newest checkpoint (set in ``config``); a fit first removes
    the partial files killed writes left, and resumes only the experiment the checkpoint was trained as.
    Returns {} when there is nothing to bring, a ``class_path`` / ``dict_kwargs`` pair for a checkpoint that
    names its task class, else the hyperparameters themselves. Raises a ZooError.
    """
    if subcommand == "fit":
        removed = [p for folder in checkpoint_folders(config)[0] for p in remove_stale_partials(folder)]
        if removed:
            print(
                f"removed {len(removed)} partial checkpoint file(s) that killed writes left, e.g. {removed[0]}",
                file=sys.stderr,
            )
    if config.get("ckpt_path") == "last":
        config["ckpt_path"] = resolve_last_checkpoint(config, fresh_if_none=subcommand == "fit")
    path = config.get("ckpt_path")
    if not path or path in ("best", "hpc") or "://" in str(path):
        return {}
    ckpt = read_checkpoint(str(path), mmap=True, trusted=classes_named(as_dict(config)))
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "_class_path" in hparams:
        task_class(ckpt, str(path))
    if subcommand == "fit":
        check_same_experiment(ckpt, str(path), as_dict(config))
    hparams.pop("_instantiator", None)
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    return hparams


def skip_pretrained_weights(config: Any) -> None:
    """With a checkpoint, which holds every weight, a pretrained backbone is rebuilt without fetching its
    pretrained weights first (they may not be on this machine at all)."""
    model_args = (config.get("model") or {}).get("init_args")
    if config.get("ckpt_path") and model_args is not None and model_args.get("pretrained") is not False:
        if split_source(str(model_args.get("backbone")))[0] is not None:
            model_args["pretrained"] = False


def follow_backbone_preprocessing(config: Any) -> dict[str, Any]:
    """Fill the datamodule's unset ``mean`` / ``std`` / ``image_size`` / ``channels`` / ``tokenizer`` from
    the model's pretrained backbone, so a config never repeats them. Returns what was set."""
    model, data = config.get("model"), config.get("data")
    model_args = model.get("init_args") if model is not None else None
    backbone = model_args.get("backbone") if model_args is not None else None
    if data is None or model_args is None or not isinstance(backbone, str) or "/" not in backbone:
        return {}
    from zoo.backbones.pretrained import preprocessing_of  # loads the adapters (and timm, ...) only when needed

    if split_source(backbone)[0] is None:
        return {}
    kwargs = dict(model_args.get("backbone_kwargs") or {})
    wanted = preprocessing_of(backbone, **kwargs)
    values = {key: wanted[key] for key in FOLLOWED if wanted.get(key) is not None}
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


def check_data_matches(
    asked_classes: Optional[int], asked_shape: Optional[Any], datamodule: Any, from_checkpoint: bool
) -> None:
    """The model's classes (and, from a checkpoint, its input shape) must be the data's. Raises ConfigError."""
    found = datamodule.num_classes if datamodule is not None else None
    if asked_classes is not None and found is not None and asked_classes != found:
        source = "the checkpoint's model" if from_checkpoint else "model.num_classes"
        raise ConfigError(
            f"{source} has {asked_classes} classes but the data ({type(datamodule).__name__}) has {found}; "
            "drop model.num_classes (it is linked from the data) or use data with matching classes"
        )
    shape = tuple(datamodule.input_shape) if datamodule is not None and from_checkpoint else None
    if asked_shape is not None and shape is not None and tuple(asked_shape) != shape:
        # e.g. a colour model given greyscale images: the weights would not fit (the first layer's channels).
        raise ConfigError(
            f"the checkpoint's model takes inputs of shape {tuple(asked_shape)} but the data "
            f"({type(datamodule).__name__}) gives {shape}; use the data settings it was trained with "
            "(channels, image_size, ...)"
        )


def check_precision(trainer_config: dict[str, Any]) -> None:
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


def check_sharded_freezing(strategy: Any, callbacks: list[Any]) -> None:
    """FSDP with a fine-tuning schedule that freezes part of the model needs ``use_orig_params=True``.

    FSDP flattens the parameters of each wrapped block (and of everything outside the blocks, in the root unit)
    into one flat parameter. Without ``use_orig_params`` a flat parameter takes one ``requires_grad`` for all of
    them: freezing the backbone's groups but not the head, or one block but not the next, fails when FSDP wraps
    the model, or later with gradients for frozen weights. With it, FSDP keeps each original parameter's own
    flag (a frozen one gets no gradient, so no update). Lightning's FSDPStrategy sets it unless told otherwise;
    this names the setting that turned it off, before any process starts. Raises ConfigError.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(strategy, FSDPStrategy) or strategy.kwargs.get("use_orig_params"):
        return
    freezing = [c.strategy for c in callbacks if isinstance(c, FineTuning) and c.strategy != "full"]
    if freezing:
        raise ConfigError(
            f"finetuning.strategy={freezing[0]} freezes part of the model, which FSDP with use_orig_params=False "
            "cannot do (one requires_grad per flat parameter); set trainer.strategy.dict_kwargs.use_orig_params: true "
            "(as configs/trainer/fsdp.yaml does), or train everything with finetuning.strategy=full"
        )


def budget_for(
    split_sizes: tuple[int, int], batch_size: int, trainer_config: dict[str, Any], steps: Any, selection: Selection
) -> Plan:
    """The step budget and the model selection (zoo.budget) for data of ``split_sizes`` (the datamodule's
    training and validation samples) and these trainer settings."""
    train_size, val_size = split_sizes
    if trainer_config.get("limit_val_batches") == 0:
        val_size = 0  # validation is off: nothing to select on
    devices, nodes = trainer_config.get("devices"), trainer_config.get("num_nodes") or 1
    processes = devices * nodes if isinstance(devices, int) and devices > 0 else nodes
    return plan(
        train_size,
        val_size,
        batch_size,
        steps,
        selection,
        processes=processes,
        accumulate=trainer_config.get("accumulate_grad_batches") or 1,
        max_epochs=trainer_config.get("max_epochs"),
        max_steps=trainer_config.get("max_steps") or -1,
    )


def apply_budget(decided: Plan, datamodule: Any, trainer_config: dict[str, Any]) -> None:
    """Apply a :func:`budget_for` decision to the datamodule and the trainer settings, and print its reasons."""
    datamodule.batch_size = decided.batch_size
    if decided.steps is not None:
        trainer_config["max_steps"], trainer_config["max_epochs"] = decided.steps, decided.epochs
    if decided.selection == "last":
        datamodule.join_validation()
        trainer_config["limit_val_batches"] = 0
    for note in decided.notes:
        print(note, file=sys.stderr)
