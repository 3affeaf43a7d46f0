"""Loop overhead per step: a tiny MLP, one thread, the zoo's Classifier under a Trainer against a hand-written loop.

Both sides train the registry's ``mlp`` (32 -> 64 -> 10) with AdamW on the same in-memory data in the same
order, and evaluate a validation split after every epoch. What the zoo adds per training step is
``(zoo seconds - plain seconds) / steps``, with the Trainer

- bare: Lightning's parity settings (no logger, progress bar, checkpoints or summary); target <= 0.6 ms;
- with the zoo's defaults: the Trainer ``zoo fit`` builds (CSV logger every 10 steps, ModelCheckpoint best and
  last, model summary, LR and gradient-norm monitors, early stopping, fine-tuning callback), progress bar and
  pictures off; target <= 1.5 ms.

Of those defaults, the layer statistics that `zoo diagnose` reads (zoo.callbacks.layer_stats: gradient norms,
update ratios and an activation pass over a fixed batch on every 10th step) are measured apart, within the same
runs: the CPU time spent in their hooks over the rest of the training loop's CPU time; target <= 3 %. Both are
measured in the same run and thread, so the load of other processes on a shared machine, which swamps a difference
of a few percent between two runs, moves both alike. This tiny MLP is their worst case: a step costs little, and
the statistics' cost is mostly Python's, per layer.

The losses of both sides must agree to 5 decimals (numpy's ``assert_almost_equal``: a difference < 1.5e-5).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from benchmarks.common import Figure, added, best, in_tmp_dir, interleave
from benchmarks.twins import (
    decay_groups,
    fit_plain,
    fit_zoo,
    loader,
    max_weight_difference,
    plain_net,
    synthetic_classification,
    zoo_trainer,
)

NAME = "overhead"
SIZES = {
    "full": {"epochs": 6, "steps_per_epoch": 200, "repeats": 5},  # 1,200 steps
    "short": {"epochs": 2, "steps_per_epoch": 200, "repeats": 2},
    "tiny": {"epochs": 1, "steps_per_epoch": 10, "repeats": 1},
}
FEATURES, HIDDEN, CLASSES, BATCH, VAL_BATCHES, SEED = 32, 64, 10, 32, 10, 0
LOSS_DECIMALS = 5


def loss_difference(name: str, zoo: list[float], plain: list[float], decimals: Optional[int] = LOSS_DECIMALS) -> Figure:
    """Largest absolute difference over pairs of losses; passes below numpy's ``1.5 * 10**-decimals`` (reported
    only with ``decimals=None``)."""
    diff = max(abs(a - b) for a, b in zip(zoo, plain, strict=True))
    at_most = None if decimals is None else 1.5 * 10.0**-decimals
    return Figure(
        name, diff, "", at_most=at_most, zoo=zoo[0], plain=plain[0], details={"zoo_losses": zoo, "plain_losses": plain}
    )


def time_layer_stats(trainer: Any) -> dict[str, float]:
    """Wraps the hooks of the trainer's LayerStats callback (if any) to add up this thread's CPU seconds in them;
    the returned dict's ``seconds`` grows as the trainer runs."""
    from zoo.callbacks.layer_stats import LayerStats

    spent = {"seconds": 0.0}
    for callback in (c for c in trainer.callbacks if isinstance(c, LayerStats)):
        for name in ("on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end", "on_save_checkpoint"):
            setattr(callback, name, _timed(getattr(callback, name), spent))
    return spent


def _timed(hook: Callable[..., Any], spent: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        start = time.thread_time()
        try:
            return hook(*args)
        finally:
            spent["seconds"] += time.thread_time() - start

    return timed


def layer_stats_share(runs: list[dict[str, Any]], steps: int) -> Figure:
    """The layer statistics' CPU time over the rest of the training loop's, in the least disturbed run (the one of
    least loop CPU time)."""
    run = min(runs, key=lambda r: r["loop_cpu_seconds"])
    own, loop = run["layer_stats_cpu_seconds"], run["loop_cpu_seconds"]
    return Figure(
        "layer statistics for zoo diagnose, % of the training loop's CPU time with zoo fit's defaults",
        own / (loop - own) * 100,
        "%",
        at_most=3.0,
        zoo=own,
        plain=loop - own,
        side_unit="s",
        sides=("layer statistics", "the rest of the loop"),
        details={
            "steps": steps,
            "log_every_n_steps": 10,
            "per_logging_step_ms": own / (steps / 10) * 1e3,
            "runs": [(round(r["layer_stats_cpu_seconds"], 4), round(r["loop_cpu_seconds"], 4)) for r in runs],
        },
    )


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    epochs, steps = size["epochs"], size["epochs"] * size["steps_per_epoch"]
    train_set = synthetic_classification(BATCH * size["steps_per_epoch"], (FEATURES,), CLASSES, SEED)
    val_set = synthetic_classification(BATCH * VAL_BATCHES, (FEATURES,), CLASSES, SEED + 1)

    def zoo(defaults: bool) -> dict[str, Any]:
        from zoo.tasks import Classifier

        torch.manual_seed(SEED)
        task = Classifier(
            backbone="mlp", backbone_kwargs={"hidden_sizes": (HIDDEN,)}, num_classes=CLASSES, input_shape=(FEATURES,)
        )
        trainer = zoo_trainer(max_epochs=epochs, defaults=defaults)
        hooks = time_layer_stats(trainer)
        result = fit_zoo(task, trainer, loader(train_set, BATCH, True, SEED), loader(val_set, BATCH, False))
        return {**result, "model": task, "layer_stats_cpu_seconds": hooks["seconds"]}

    def plain() -> dict[str, Any]:
        torch.manual_seed(SEED)
        net = plain_net("mlp", (FEATURES,), CLASSES, hidden_sizes=(HIDDEN,))
        optimizer = torch.optim.AdamW(decay_groups(net, weight_decay=0.01))  # the zoo's default optimizer
        result = fit_plain(net, optimizer, loader(train_set, BATCH, True, SEED), epochs, loader(val_set, BATCH, False))
        return {**result, "model": net}

    with in_tmp_dir():
        runs = interleave(
            {"zoo": lambda: zoo(False), "plain": plain, "zoo_defaults": lambda: zoo(True)},
            repeats=size["repeats"],
            threads=1,
            warmup=mode != "tiny",
        )
    z, p, d = best(runs["zoo"]), best(runs["plain"]), best(runs["zoo_defaults"])
    if not z["steps"] == p["steps"] == d["steps"] == steps:
        raise RuntimeError(f"steps differ: zoo {z['steps']}, plain {p['steps']}, zoo defaults {d['steps']}")
    times = {k: [round(r["seconds"], 4) for r in v] for k, v in runs.items()}
    return [
        added(
            "added time per step, bare Trainer",
            z["seconds"],
            p["seconds"],
            per=steps,
            scale=1e3,
            unit="ms",
            side_unit="s",
            at_most=0.6,
            steps=steps,
            runs=times,
        ),
        added(
            "added time per step, zoo fit's default callbacks and CSV logger",
            d["seconds"],
            p["seconds"],
            per=steps,
            scale=1e3,
            unit="ms",
            side_unit="s",
            at_most=1.5,
            steps=steps,
            runs=times,
        ),
        layer_stats_share(runs["zoo_defaults"], steps),
        loss_difference(
            "loss difference zoo vs plain, last epoch train and val",
            [z["train_loss"], z["val_loss"]],
            [p["train_loss"], p["val_loss"]],
        ),
        Figure(
            "largest weight difference zoo vs plain after training",
            max_weight_difference(z["model"], p["model"]),
            "",
            details={"note": "same seed, data order and optimizer: only float rounding may differ"},
        ),
    ]
