"""Memory: peak RSS of the same training in separate processes: the zoo against stock Lightning running the same
network (target zoo <= stock Lightning + 64 MiB), and against a plain PyTorch loop, reported beside it.

Each side runs in a fresh ``python -m benchmarks.memory --child ...`` process that imports only what that side
needs, trains, and reports its resident set after the imports and its peak (``VmHWM``). The plain side imports
torch and the zoo's registry (for the same network); the stock Lightning side wraps that network, optimizer and
loss in a minimal ``LightningModule`` (:func:`benchmarks.twins.stock_lightning`) under a Trainer of Lightning's
parity settings, and, in the full run, under Lightning's default Trainer (its logger and checkpoints); the zoo
side imports the task and Lightning, and with ``defaults`` the CLI that builds ``zoo fit``'s Trainer. A last side,
the plain loop after ``import lightning.pytorch``, shows what Lightning's import alone costs any program (it
imports torchmetrics, which imports scipy, torchvision and transformers at once: Lightning-AI/torchmetrics#3457).
Data: in-memory, the digits' shape (1,257 training images 1x8x8) for the CNN recipe, random CIFAR-shaped images
for ResNet-18; every side evaluates two validation batches after each epoch (``zoo fit``'s checkpoint and early
stopping need ``val/loss``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from benchmarks.common import Figure, added, run_python

NAME = "memory"
SIZES = {
    "full": {"cnn_epochs": 3, "resnet_steps": 2, "repeats": 2, "resnet": True, "cli": True},
    "short": {"cnn_epochs": 1, "resnet_steps": 1, "repeats": 1, "resnet": False, "cli": False},
    "tiny": {"cnn_epochs": 1, "resnet_steps": 1, "repeats": 1, "resnet": False, "cli": False},
}
LIMIT_MIB = 64
MODELS = {
    # name: (recipe, input shape, training samples, batch size)
    "cnn": ("configs/experiments/digits_cnn.yaml", (1, 8, 8), 1257, 64),
    "resnet18": ("configs/model/resnet18.yaml", (3, 32, 32), None, 32),
}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(side: str, model: str, epochs: int, steps: int) -> dict[str, Any]:
    """Train one side in this process; return its RSS after the imports and its peak, in MiB."""
    import torch

    from benchmarks.twins import fit_plain, loader, plain_twin, recipe, synthetic_classification

    if side in ("plain_lightning", "lightning", "lightning_defaults"):
        import lightning.pytorch  # noqa: F401  (and with it torchmetrics, which imports scipy, torchvision, transformers)
    elif side != "plain":
        from benchmarks.twins import fit_zoo, zoo_classifier, zoo_trainer  # noqa: F401
        from zoo.tasks import Classifier  # noqa: F401  (Lightning and torchmetrics)

        if side == "zoo_defaults":
            import cli  # noqa: F401
    torch.set_num_threads(2)
    after_imports = _status_mib("VmRSS")
    path, shape, n, batch = MODELS[model]
    n = n if n is not None else steps * batch
    data = synthetic_classification(n, shape, 10, seed=0)
    val = loader(synthetic_classification(batch * 2, shape, 10, seed=1), batch, False)  # zoo fit's callbacks need it
    spec = recipe(path)
    torch.manual_seed(0)
    if side.startswith("plain"):
        net, optimizer, loss_fn = plain_twin(spec, shape, 10)
        fit_plain(net, optimizer, loader(data, batch, True), epochs, val, loss_fn=loss_fn)
    else:
        from benchmarks.common import in_tmp_dir
        from benchmarks.twins import fit_zoo, stock_lightning, zoo_trainer

        with in_tmp_dir():
            if side.startswith("lightning"):
                from lightning.pytorch import Trainer

                module = stock_lightning(*plain_twin(spec, shape, 10))
                stock = {"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "enable_progress_bar": False}
                trainer = Trainer(**stock) if side == "lightning_defaults" else zoo_trainer(max_epochs=epochs)
            else:
                trainer = zoo_trainer(max_epochs=epochs, defaults=side == "zoo_defaults")
                module = zoo_classifier(spec, shape, 10)
            fit_zoo(module, trainer, loader(data, batch, True), val)
    return {"rss_after_imports_mib": after_imports, "peak_rss_mib": _status_mib("VmHWM"), "modules": len(sys.modules)}


def measure(side: str, model: str, epochs: int, steps: int) -> dict[str, Any]:
    return run_python(["-m", "benchmarks.memory", "--child", side, model, str(epochs), str(steps)])


def _added(name: str, zoo: dict[str, Any], other: dict[str, Any], at_most: Optional[float] = None) -> Figure:
    return added(
        name,
        zoo["peak_rss_mib"],
        other["peak_rss_mib"],
        per=1,
        scale=1,
        unit="MiB",
        side_unit="MiB",
        at_most=at_most,
        after_imports=(zoo["rss_after_imports_mib"], other["rss_after_imports_mib"]),
        of_which_imports=zoo["rss_after_imports_mib"] - other["rss_after_imports_mib"],
        modules=(zoo["modules"], other["modules"]),
    )


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    figures = []
    for model in ("cnn", "resnet18") if size["resnet"] else ("cnn",):
        epochs = size["cnn_epochs"] if model == "cnn" else 1
        sides = ("zoo", "lightning", "plain", "plain_lightning")
        sides += ("zoo_defaults", "lightning_defaults") if size["cli"] else ()
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for _ in range(size["repeats"]):  # interleaved; the smallest peak of each side counts
            for side in runs:
                runs[side].append(measure(side, model, epochs, size["resnet_steps"]))
        low = {side: min(r, key=lambda x: x["peak_rss_mib"]) for side, r in runs.items()}
        stock, plain = "stock Lightning, same network", "plain PyTorch loop"
        pairs = [
            (f"{model}: peak RSS zoo - {stock} (both bare Trainer)", "zoo", "lightning", LIMIT_MIB),
            (f"{model}: peak RSS zoo - {plain} (bare Trainer)", "zoo", "plain", None),
            # zoo fit's Trainer is built by the CLI from a minimal config, whose data (SklearnTabular, never loaded
            # for training here) still reads its class count through scikit-learn, with pandas: ~47 MiB of it.
            (
                f"{model}: peak RSS zoo fit's Trainer and CLI - {stock}, default Trainer",
                "zoo_defaults",
                "lightning_defaults",
                LIMIT_MIB,
            ),
            (f"{model}: peak RSS zoo fit's Trainer and CLI - {plain}", "zoo_defaults", "plain", None),
            # What importing Lightning costs any loop: most of the zoo's difference to a plain loop.
            (f"{model}: peak RSS {plain} with Lightning imported - {plain}", "plain_lightning", "plain", None),
        ]
        for name, a, b, limit in pairs:
            if a in low and b in low:
                figures.append(_added(name, low[a], low[b], limit))
                figures[-1].sides = (a, b)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "MODEL", "EPOCHS", "STEPS"), required=True)
    side, model, epochs, steps = parser.parse_args().child
    print(json.dumps(child(side, model, int(epochs), int(steps))))
