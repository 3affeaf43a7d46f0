"""`zoo lr-find`: Lightning's learning-rate range test on a zoo config, written as a plot and a config.

    zoo lr-find --config configs/experiments/digits_mlp.yaml
    zoo lr-find --config configs/experiments/digits_cnn.yaml --batch_size_finder --max_batch_size 512

The run is built from the config (logger and progress bar off) and trained for ``--num_training`` steps
while the optimizer's LR grows from ``--min_lr`` to ``--max_lr`` (Lightning's ``Tuner.lr_find``); the
suggestion is the LR where the smoothed loss falls fastest on its way down (smoothed without lag and
measured against log LR, unlike Lightning 2.6's own suggestion: see :mod:`zoo.lr_curve`).
Into ``runs/lr_find/<config name>/`` (or ``--output``) go ``lr_find.png`` (loss against LR, the suggestion
marked), ``lr_find.json`` (the LRs, the losses and the suggestion) and ``lr_find.yaml``: the whole resolved
config with ``model.init_args.optimizer.init_args.lr`` set to the suggestion, which ``zoo fit --config``
runs as is.

The swept LR is the optimizer's ``lr``, the head's. With the ``finetuning`` callback's discriminative
rates (``backbone_lr_ratio``, ``layer_lr_decay``) each backbone group steps at its multiple of it, and a
group that the schedule keeps frozen in the first epoch does not move: the test runs the model as its
first epoch of training would.

``--batch_size_finder`` first runs Lightning's ``Tuner.scale_batch_size`` (power mode: 2, 4, 8, ... until
memory runs out, the training split is used up or ``--max_batch_size`` is reached), then finds the LR for
that batch size and writes both into ``lr_find.yaml``. On a CPU memory hardly ever runs out, so the cap
decides there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional

from zoo.errors import ConfigError
from zoo.lr_curve import finite_or_none, plot_lr_find, smooth, suggestion_index

LR_KEY = "model.init_args.optimizer.init_args.lr"
BATCH_KEY = "data.init_args.batch_size"
# The suggestion skips the first 10 steps and the last one (as Lightning's does) and needs two points besides.
MIN_STEPS = 20


def build_parser() -> argparse.ArgumentParser:
    """The options of `zoo lr-find` (config overrides such as ``--trainer.max_epochs=5`` are taken apart)."""
    parser = argparse.ArgumentParser(
        prog="zoo lr-find",
        description="\n\n".join(__doc__.split("\n\n", 3)[:3])
        + "\n\nDotted config overrides (--trainer.precision=16-mixed, --data.init_args.batch_size=32, ...) "
        "apply to the search and are kept in lr_find.yaml.",
        epilog=__doc__.split("\n\n", 3)[3],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the zoo config to find a learning rate for")
    parser.add_argument("--min_lr", type=float, default=1e-7, help="the first LR of the sweep (default 1e-7)")
    parser.add_argument("--max_lr", type=float, default=1.0, help="the last LR of the sweep (default 1)")
    parser.add_argument(
        "--num_training", type=int, default=100, help=f"training steps, one LR each (default 100, at least {MIN_STEPS})"
    )
    parser.add_argument(
        "--mode",
        choices=("exponential", "linear"),
        default="exponential",
        help="how the LR grows from step to step (default exponential)",
    )
    parser.add_argument(
        "--early_stop_threshold",
        type=float,
        default=4.0,
        help="stop once the smoothed loss exceeds this many times its best (default 4)",
    )
    parser.add_argument(
        "--batch_size_finder",
        action="store_true",
        help="first find the largest batch size that trains (data.batch_size), up to --max_batch_size",
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=1024, help="the batch size finder's cap, a power of two (default 1024)"
    )
    parser.add_argument("--output", help="folder for the results (default runs/lr_find/<config name>)")
    return parser


def main(argv: list[str]) -> None:
    """`zoo lr-find`: check the options, run the finder(s), write and print the results."""
    from zoo.commands import parse_with_overrides

    opts, overrides = parse_with_overrides(build_parser(), argv)
    check_options(opts)
    lr_find(opts, overrides)


def check_options(opts: argparse.Namespace) -> None:
    """Refuse a sweep that cannot give a suggestion, before anything is built."""
    if not 0.0 < opts.min_lr < opts.max_lr:
        raise ConfigError(f"--min_lr ({opts.min_lr:g}) must be above 0 and below --max_lr ({opts.max_lr:g})")
    if opts.num_training < MIN_STEPS:
        raise ConfigError(
            f"--num_training {opts.num_training} is too few steps for a suggestion (Lightning skips "
            f"the first 10); use at least {MIN_STEPS}, 100 is usual"
        )
    if opts.early_stop_threshold is not None and opts.early_stop_threshold <= 1.0:
        raise ConfigError(f"--early_stop_threshold {opts.early_stop_threshold:g} must be above 1")
    if opts.batch_size_finder and opts.max_batch_size < 2:
        raise ConfigError(f"--max_batch_size {opts.max_batch_size} must be at least 2")


def lr_find(opts: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Run the search for ``opts.config`` plus ``overrides`` and write its results; returns the JSON's content.

    Raises:
        ConfigError: the optimizer has no ``lr`` to set, or the sweep gave no suggestion (the plot and the
            JSON are written all the same).
    """
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.tuner import Tuner

    from zoo.run.build import build, parse, quiet_cli

    parser, base = parse(["--config", opts.config, *overrides])  # what lr_find.yaml starts from: the user's config only
    check_config(base, opts.config, opts.batch_size_finder)
    out = Path(opts.output or Path("runs") / "lr_find" / Path(opts.config).stem)
    args = [
        "--config",
        opts.config,
        *overrides,
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        "--trainer.max_epochs=-1",
    ]  # the sweep's steps decide, not a short config's epochs
    with quiet_cli():
        model, datamodule, trainer = build(args)
    if trainer.fast_dev_run:
        raise ConfigError("trainer.fast_dev_run makes Lightning skip the LR finder; drop it for zoo lr-find")
    # Each Tuner call is a Trainer.fit, which would write config.yaml into the default root folder.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)]
    out.mkdir(parents=True, exist_ok=True)
    tuner = Tuner(trainer)

    with whole_state_saves(trainer):
        batch_size = find_batch_size(tuner, model, datamodule, opts.max_batch_size) if opts.batch_size_finder else None
        multipliers = group_multipliers(model, trainer.callbacks)
        with quiet_cli(), lr_multipliers(trainer, multipliers), recorded_losses(model) as raw:
            # update_attr=False: the zoo's tasks keep the LR in the optimizer's config, not in a self.lr to update.
            finder = tuner.lr_find(
                model,
                datamodule=datamodule,
                min_lr=opts.min_lr,
                max_lr=opts.max_lr,
                num_training=opts.num_training,
                mode=opts.mode,
                early_stop_threshold=opts.early_stop_threshold,
                update_attr=False,
            )
    lrs = [float(v) for v in finder.results["lr"]]
    if len(raw) != len(lrs):  # not one loss per recorded LR (gradient accumulation?): Lightning's own curve
        raw, losses = [], [float(v) for v in finder.results["loss"]]
    else:
        losses = smooth(raw)
    at = suggestion_index(lrs, losses, log_x=opts.mode == "exponential")
    suggestion = lrs[at] if at is not None else None
    stopped_early = len(lrs) < opts.num_training
    result = {
        "config": opts.config,
        "suggestion": suggestion,
        "mode": opts.mode,
        "min_lr": opts.min_lr,
        "max_lr": opts.max_lr,
        "num_training": opts.num_training,
        "steps": len(lrs),
        "stopped_early": stopped_early,
        "batch_size": batch_size if batch_size is not None else getattr(datamodule, "batch_size", None),
        "batch_size_found": batch_size is not None,
        "lr_multipliers": multipliers,
        "lrs": lrs,
        "losses": finite_or_none(losses),
        "raw_losses": finite_or_none(raw),
    }
    (out / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_lr_find(
        lrs,
        losses,
        raw,
        at,
        out / "lr_find.png",
        log_x=opts.mode == "exponential",
        span=(opts.min_lr, opts.max_lr),
        stopped_early=stopped_early,
        title=_title(opts, base, result),
    )
    if suggestion is None:
        if stopped_early:
            last = lrs[-1] if lrs else opts.min_lr
            why = (
                f"the loss diverged after {len(lrs)} of {opts.num_training} steps (at lr {last:.3g}), too "
                "early for one; start lower (--min_lr, --max_lr)"
            )
        else:
            why = (
                f"the loss never fell between lr {opts.min_lr:g} and {opts.max_lr:g}; widen the range "
                "(--min_lr, --max_lr) or take more steps (--num_training)"
            )
        raise ConfigError(f"the LR search gave no suggestion: {why}; see {out / 'lr_find.png'}")
    print(f"suggested learning rate: {suggestion:.3g}" + (f" (batch size {batch_size})" if batch_size else ""))
    if stopped_early:
        print(f"the loss diverged after {len(lrs)} of {opts.num_training} steps, at lr {lrs[-1]:.3g}")
    config_path = write_config(parser, base, out / "lr_find.yaml", opts.config, suggestion, batch_size)
    print(
        f"written {out / 'lr_find.png'}, {out / 'lr_find.json'} and {config_path}\n"
        f"run it with: zoo fit --config {config_path}"
    )
    return result


def write_config(parser: Any, base: Any, path: Path, source: str, lr: float, batch_size: Optional[int]) -> Path:
    """The resolved config with the suggested LR (and batch size), as YAML that `zoo fit --config` runs."""
    from zoo.run.build import dump_with

    values: dict[str, Any] = {LR_KEY: lr}
    if batch_size is not None:
        values[BATCH_KEY] = batch_size
    scheduler = base.get("model.init_args.lr_scheduler")
    if scheduler is not None and str(scheduler.get("class_path", "")).endswith("OneCycleLR"):
        # OneCycleLR overwrites the optimizer's LR with its own, from max_lr.
        values["model.init_args.lr_scheduler.init_args.max_lr"] = lr
        print(f"the config's OneCycleLR gets max_lr={lr:.3g} too (it sets the LR from it)")
    header = (
        f"# zoo lr-find: {source} with the suggested LR {lr:.3g} (steepest fall of the smoothed loss)"
        + (f" and batch size {batch_size}" if batch_size is not None else "")
        + f"\n# Run: zoo fit --config {path}\n"
    )
    path.write_text(header + dump_with(parser, base, values))
    return path


def check_config(config: Any, path: str, wants_batch_size: bool) -> None:
    """Raise a ConfigError when the config has no optimizer LR (or no batch size) to write the result into."""
    optimizer = config.get("model.init_args.optimizer")
    init_args = optimizer.get("init_args") if hasattr(optimizer, "get") else None
    if init_args is None or init_args.get("lr") is None:
        name = optimizer.get("class_path") if hasattr(optimizer, "get") else optimizer
        raise ConfigError(
            f"{path}: the optimizer ({name}) has no lr, so there is no learning rate to find "
            f"({LR_KEY}); use an optimizer that takes lr, e.g. torch.optim.AdamW"
        )
    if wants_batch_size and config.get(BATCH_KEY) is None:
        raise ConfigError(f"{path}: the data has no batch_size for --batch_size_finder to set")


def find_batch_size(tuner: Any, model: Any, datamodule: Any, cap: int) -> int:
    """Lightning's power-mode batch size finder on ``datamodule.batch_size``, from 2 up to ``cap`` (rounded
    down to a power of two), tried at the cap itself too; the datamodule keeps the size found."""
    top = 2 ** int(math.log2(cap))
    if top != cap:
        print(f"--max_batch_size {cap} is not a power of two; the batch size finder stops at {top}")
    # max_trials, not max_val, is the cap: Lightning stops at max_val without trying it. From 2, the
    # k-th trial runs 2**k, so log2(top) trials end by running `top`.
    found = tuner.scale_batch_size(
        model,
        datamodule=datamodule,
        mode="power",
        init_val=2,
        max_trials=int(math.log2(top)),
        max_val=2 * top,
        batch_arg_name="batch_size",
    )
    if found is None:
        raise ConfigError("the batch size finder did not run (trainer.fast_dev_run?)")
    print(f"batch size finder: {found}" + (" (the cap, --max_batch_size)" if found == top else ""))
    return int(found)


def group_multipliers(model: Any, callbacks: list[Any]) -> dict[str, float]:
    """Each named optimizer group's LR as a multiple of the optimizer's ``lr`` in the first epoch of training:
    the FineTuning callback's discriminative multiplier, or 0 for a group it keeps frozen then. Empty
    without the callback (every group at the optimizer's ``lr``)."""
    from zoo.callbacks.finetuning import NO_DECAY, FineTuning

    finetuning = next((c for c in callbacks if isinstance(c, FineTuning)), None)
    if finetuning is None or not hasattr(model, "named_layer_groups"):
        return {}
    groups = list(model.named_layer_groups())
    backbone = [name for name in groups if name.startswith("backbone.")]
    trainable = set(finetuning.trainable_at(0, backbone))
    multipliers = {}
    for name in groups:
        frozen = name in backbone and name not in trainable
        multipliers[name] = multipliers[name + NO_DECAY] = 0.0 if frozen else finetuning.lr_multiplier(name, backbone)
    return multipliers if any(m != 1.0 for m in multipliers.values()) else {}


@contextlib.contextmanager
def whole_state_saves(trainer: Any) -> Iterator[None]:
    """``trainer.save_checkpoint`` with ``weights_only=False`` given, as Lightning's tuners leave it unsaid.

    Each tuner saves the whole run (weights, optimizer, loops, callbacks) to a temporary checkpoint and
    restores it when done, which needs every part of it; Lightning 2.6 logs a ``weights_only`` left unset as
    "`weights_only` was not set, defaulting to `False`", which reads as if a file were loaded unsafely. (The
    file is read back through the zoo's AtomicCheckpointIO, with ``weights_only=True``.)
    """
    trainer.save_checkpoint = functools.partial(trainer.save_checkpoint, weights_only=False)
    try:
        yield
    finally:
        del trainer.save_checkpoint  # the class's method again


@contextlib.contextmanager
def lr_multipliers(trainer: Any, multipliers: dict[str, float]) -> Iterator[None]:
    """Scale each optimizer group's LR by its multiplier for the length of every optimizer step.

    Lightning's finder gives all groups one LR (its schedule sets ``lr`` and ``initial_lr`` of every group),
    and the FineTuning callback, which would scale them, never runs inside the finder's loop. Scaling only
    during ``step()`` keeps the schedule, and the LR the finder records, at the optimizer's own ``lr``.
    """
    if not multipliers:
        yield
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    saved: dict[int, list[Any]] = {}

    def scale(optimizer: Any, args: Any, kwargs: Any) -> None:
        if not any(optimizer is o for o in trainer.optimizers):
            return
        saved[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * multipliers.get(group.get("name", ""), 1.0)

    def restore(optimizer: Any, args: Any, kwargs: Any) -> None:
        for group, lr in zip(optimizer.param_groups, saved.pop(id(optimizer), [])):
            group["lr"] = lr

    handles = [register_optimizer_step_pre_hook(scale), register_optimizer_step_post_hook(restore)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def recorded_losses(model: Any) -> Iterator[list[float]]:
    """The training loss of every optimizer step, as the LR finder's own callback sees it, unsmoothed.

    Lightning keeps only its smoothed curve, and that one starts near half the true loss (its bias
    correction counts one step too many), so an untrained model seems to get worse at the smallest LRs.
    The finder's loop runs no other callback, so the record is taken in the module's own hook.
    """
    losses: list[float] = []
    inner = model.on_train_batch_end

    def record(outputs: Any, batch: Any, batch_idx: int) -> Any:
        trainer = model.trainer
        if (trainer.fit_loop.batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # as the finder records
            loss = outputs if not isinstance(outputs, dict) else outputs.get("loss")
            losses.append(float(loss) if loss is not None else math.nan)
        return inner(outputs, batch, batch_idx)

    model.on_train_batch_end = record
    try:
        yield losses
    finally:
        del model.on_train_batch_end  # the class's hook again


def _title(opts: argparse.Namespace, base: Any, result: dict[str, Any]) -> str:
    optimizer = str(base.get("model.init_args.optimizer.class_path", "")).rsplit(".", 1)[-1]
    batch = f", batch size {result['batch_size']}" if result.get("batch_size") else ""
    return f"LR range test: {Path(opts.config).stem}\n{optimizer}, {result['steps']} steps{batch}"
