"""The feature cache (:class:`zoo.callbacks.FeatureCache`): feature extraction with the cache on and off.

Two runs of ``zoo fit`` as the CLI builds them (:func:`zoo.run.build.build`), ``--feature_cache.mode=off`` and
the default ``auto``, interleaved, same seed, 1 thread:

- ``vader_minilm_feature_extraction``: the recipe as it is (MiniLM frozen, a linear head on word sentiment);
- a timm ResNet-18 (random weights: nothing is downloaded) frozen under a new head, on a generated folder of
  JPEG images read by :class:`datamodules.ImageFolder` (decoded and resized every epoch without the cache).

An epoch's time runs from its start to the next one's (validation, checkpoint-free end-of-epoch hooks and the
cache's planning included); the first runs from the fit's start, so the cache's one pass over the data counts
in it. Figures: the median epoch after the first, off / on (target: at least 10x), the first epoch on / off
(reported), and the largest difference between the two runs' test metrics (the same within float rounding).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Figure, in_tmp_dir, interleave, ratio, single

NAME = "feature_cache"
SIZES: dict[str, dict[str, Any]] = {
    "full": {"repeats": 1, "vader": {"epochs": 3}, "images": {"epochs": 4, "per_class": 250, "size": 64}},
    "short": {
        "repeats": 1,
        "vader": {"epochs": 2, "train_size": 128, "test_batches": 2},  # validation is whole: it is cached too
        "images": {"epochs": 2, "per_class": 48, "size": 64},
    },
    "tiny": {"repeats": 1, "images": {"epochs": 2, "per_class": 8, "size": 16}},
}
CLASSES = 4
METRIC_TOLERANCE = 1e-4  # test metrics of the two runs; float rounding of the features moves them ~1e-7
VADER = ROOT / "configs" / "experiments" / "vader_minilm_feature_extraction.yaml"
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--pictures=false",
]


def epoch_clock() -> Any:
    """A callback marking the fit's start, each epoch's start after the first, and the end of training."""
    from lightning.pytorch import Callback

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.marks = [time.perf_counter()]

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch > 0:
                self.marks.append(time.perf_counter())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.marks.append(time.perf_counter())

        @property
        def epochs(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return EpochClock()


def fit_and_test(args: list[str]) -> dict[str, Any]:
    """Build the run as ``zoo fit`` would, fit it with the clock first among its callbacks, test the last weights."""
    from benchmarks.twins import quiet
    from zoo.run.build import build

    clock = epoch_clock()
    with quiet():
        task, datamodule, trainer = build([*QUIET, *args])
        trainer.callbacks.insert(0, clock)  # its on_fit_start runs before the cache's pass over the data
        trainer.fit(task, datamodule=datamodule)
        metrics = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    cache = next((c for c in trainer.callbacks if type(c).__name__ == "FeatureCache"), None)
    epochs = clock.epochs
    return {
        "seconds": sum(epochs),
        "epochs": epochs,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "head": [p.detach().clone() for p in task.head.parameters()],
        "lines": list(cache.lines) if cache is not None else [],
    }


def image_folder(root: Path, per_class: int, size: int) -> Path:
    """``per_class`` JPEGs of each of ``CLASSES`` classes at ``size`` x ``size``: a class's own colour pattern
    plus noise, so that a head on frozen random features still learns something."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        pattern = rng.uniform(0, 255, (size, size, 3))
        for i in range(per_class):
            pixels = np.clip(0.6 * pattern + rng.normal(0, 40, (size, size, 3)) + 50, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def workloads(mode: str, tmp: Path) -> dict[str, list[str]]:
    """The argument lists of each workload at this size."""
    size = SIZES[mode]
    found: dict[str, list[str]] = {}
    if "vader" in size:
        v = size["vader"]
        args = ["--config", str(VADER), f"--trainer.max_epochs={v['epochs']}", f"--data.data_dir={tmp / 'vader'}"]
        if "train_size" in v:
            args += [
                f"--data.train_size={v['train_size']}",
                f"--trainer.limit_test_batches={v['test_batches']}",
            ]
        found["vader_minilm_feature_extraction (MiniLM, 22.7M parameters)"] = args
    im = size["images"]
    folder = image_folder(tmp / "images", im["per_class"], im["size"])
    found[f"timm/resnet18 on {CLASSES * im['per_class']:,} JPEGs at {im['size']}x{im['size']}"] = [
        "--model=zoo.tasks.Classifier",
        "--model.backbone=timm/resnet18",
        "--model.pretrained=false",
        "--data=datamodules.ImageFolder",
        f"--data.data_dir={folder}",
        f"--data.image_size={im['size']}",
        "--data.batch_size=32",
        "--finetuning.strategy=feature_extraction",
        f"--trainer.max_epochs={im['epochs']}",
    ]
    return found


def figures(name: str, off: list[dict[str, Any]], on: list[dict[str, Any]]) -> list[Figure]:
    """Speed-up of the epochs after the first, the first epoch's cost, and how far the two runs' results differ."""
    later_off = min(statistics.median(r["epochs"][1:]) for r in off)
    later_on = min(statistics.median(r["epochs"][1:]) for r in on)
    first_off, first_on = min(r["epochs"][0] for r in off), min(r["epochs"][0] for r in on)
    metric_gap = max(abs(a["metrics"][k] - b["metrics"][k]) for a, b in zip(off, on) for k in a["metrics"])
    head_gap = max(float((p - q).abs().max()) for a, b in zip(off, on) for p, q in zip(a["head"], b["head"]))
    details = {
        "epochs_off": [[round(s, 4) for s in r["epochs"]] for r in off],
        "epochs_on": [[round(s, 4) for s in r["epochs"]] for r in on],
        "test_metrics_off": off[0]["metrics"],
        "test_metrics_on": on[0]["metrics"],
        "cache_lines": on[0]["lines"],
    }
    sides = ("cache off", "cache on")
    return [
        ratio(f"{name}: epoch after the first, cache off / on", later_off, later_on, "s", 10.0, sides, **details),
        ratio(f"{name}: first epoch (with the one pass), cache on / off", first_on, first_off, "s", sides=sides[::-1]),
        single(f"{name}: largest test metric difference, cache on vs off", metric_gap, "", at_most=METRIC_TOLERANCE),
        single(f"{name}: largest head weight difference after training", head_gap, ""),
    ]


def run(mode: str) -> list[Figure]:
    found: list[Figure] = []
    with in_tmp_dir() as tmp:
        for name, args in workloads(mode, tmp).items():
            runs = interleave(
                {
                    "off": lambda args=args: fit_and_test([*args, "--feature_cache.mode=off"]),
                    "on": lambda args=args: fit_and_test([*args, "--feature_cache.mode=auto"]),
                },
                repeats=SIZES[mode]["repeats"],
                threads=1,
                warmup=False,
            )
            found += figures(name, runs["off"], runs["on"])
    return found
