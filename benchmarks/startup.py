"""Start-up: ``zoo --help`` under 2 s, ``zoo models`` under 1 s, the time from ``zoo fit`` to its first training step, and which heavy
libraries ``import cli`` and ``import zoo`` pull in (they should be imported only where they are used).

Every figure comes from fresh processes (``python cli.py ...``, which is what the ``zoo`` script runs). The import
breakdown is read from ``python -X importtime``: for each heavy library, the seconds its import took and the
chain of imports that reached it.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Figure, run_python, single

NAME = "startup"
SIZES = {
    "full": {"help_runs": 3, "fit_runs": 2, "separate_importtime": True},
    "short": {"help_runs": 1, "fit_runs": 1, "separate_importtime": False},
    "tiny": {"help_runs": 1, "fit_runs": 1, "separate_importtime": False},
}
HELP_LIMIT_S = 2.0
MODELS_LIMIT_S = 1.0  # listing the registered backbones reads a static table: no torch (zoo.commands.models)
# The optional heavy libraries that STYLE.md says are imported only where used, and matplotlib (pictures only).
OPTIONAL_HEAVY = ("transformers", "timm", "wandb", "optuna", "onnx", "onnxruntime", "onnxscript", "matplotlib")
# Heavy, and not optional, but not needed to print help either: reported with their cost and who imports them.
OTHER_HEAVY = (
    "lightning",
    "torchmetrics",
    "torchvision",
    "scipy",
    "sklearn",
    "pandas",
    "torch._dynamo",
    "jsonargparse",
)
FIT_ARGS = [
    "fit",
    "--config",
    str(ROOT / "configs/experiments/digits_cnn.yaml"),
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--pictures=false",
    "--test_after_fit=false",
    "--trainer.callbacks+=benchmarks.clock.FirstStepClock",
]


def parse_importtime(stderr: str) -> list[tuple[str, float, float, list[str]]]:
    """``python -X importtime`` lines as ``(module, self s, cumulative s, chain of importers from the top)``."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)) / 1e6, int(m.group(2)) / 1e6, (len(m.group(3)) - 1) // 2))
    # Children are printed before their parent, one level deeper: a row's parent is the next row one level up.
    out = []
    for i, (name, own, cumulative, depth) in enumerate(rows):
        chain, want = [], depth - 1
        for parent, _, _, d in rows[i + 1 :]:
            if d == want:
                chain.append(parent)
                want -= 1
                if want < 0:
                    break
        out.append((name, own, cumulative, chain[::-1]))
    return out


def heavy_report(rows: list[tuple[str, float, float, list[str]]], names: tuple[str, ...]) -> dict[str, Any]:
    """For each package of ``names`` that was imported: the seconds of its costliest import (the package or a
    submodule, children included) and the chain of imports that reached it."""
    found: dict[str, Any] = {}
    for name, _, cumulative, chain in rows:
        for package in names:
            if (name == package or name.startswith(package + ".")) and cumulative > found.get(package, {}).get(
                "seconds", -1.0
            ):
                shown = chain if len(chain) <= 6 else [*chain[:2], "...", *chain[-3:]]
                found[package] = {"seconds": round(cumulative, 3), "via": " > ".join([*shown, name])}
    return found


def importtime(statement: str) -> tuple[float, list[tuple[str, float, float, list[str]]]]:
    """Seconds of ``python -X importtime -c STATEMENT`` and its parsed import tree."""
    result = run_python(["-X", "importtime", "-c", statement], json_result=False)
    return result["wall"], parse_importtime(result["stderr"])


def time_to_first_step() -> dict[str, float]:
    """Seconds from launching ``zoo fit`` (digits CNN, one step) to its ``fit`` start and its first step."""
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        clock = Path(tmp) / "clock.json"
        launched = time.time()
        run_python(
            ["-u", str(ROOT / "cli.py"), *FIT_ARGS],
            env={"ZOO_BENCH_CLOCK": str(clock)},
            cwd=Path(tmp),
            json_result=False,
        )
        times = json.loads(clock.read_text())
    return {"to_fit_start": times["fit_start"] - launched, "to_first_step": times["first_step"] - launched}


def run(mode: str) -> list[Figure]:
    size = SIZES[mode]
    help_cmd = [str(ROOT / "cli.py"), "--help"]
    if size["separate_importtime"]:
        help_walls = [run_python(help_cmd, json_result=False)["wall"] for _ in range(size["help_runs"])]
        _, cli_rows = importtime("import cli")
        note = "plain runs"
    else:  # one run serves both (importtime adds a few per cent)
        result = run_python(["-X", "importtime", *help_cmd], json_result=False)
        help_walls, cli_rows = [result["wall"]], parse_importtime(result["stderr"])
        note = "measured with -X importtime on"
    models_walls = [
        run_python([str(ROOT / "cli.py"), "models"], json_result=False)["wall"] for _ in range(size["help_runs"])
    ]
    zoo_wall, zoo_rows = importtime("import zoo")
    # `import cli` has a row for cli; a run of `python cli.py` imports cli's imports at the top level.
    root = ["cli"] if any(name == "cli" and not chain for name, _, _, chain in cli_rows) else []
    direct = [(c, name) for name, _, c, chain in cli_rows if chain == root]
    cli_total = sum(c for c, _ in direct) if not root else next(c for n, _, c, ch in cli_rows if n == "cli" and not ch)
    top = sorted(direct, reverse=True)[:8]
    fits = [time_to_first_step() for _ in range(size["fit_runs"])]
    fit = min(fits, key=lambda f: f["to_first_step"])
    cli_heavy, zoo_heavy = heavy_report(cli_rows, OPTIONAL_HEAVY), heavy_report(zoo_rows, OPTIONAL_HEAVY)
    return [
        single(
            "zoo --help (python cli.py --help), best run",
            min(help_walls),
            "s",
            at_most=HELP_LIMIT_S,
            runs=help_walls,
            note=note,
        ),
        single(
            "zoo models (python cli.py models), best run",
            min(models_walls),
            "s",
            at_most=MODELS_LIMIT_S,
            runs=models_walls,
        ),
        single(
            "import cli",
            cli_total,
            "s",
            direct_imports={n: round(c, 3) for c, n in top},
            heavy=heavy_report(cli_rows, OTHER_HEAVY),
        ),
        single("optional heavy libraries imported by `import cli`", len(cli_heavy), "", at_most=0, imported=cli_heavy),
        single(
            "optional heavy libraries imported by `import zoo`",
            len(zoo_heavy),
            "",
            at_most=0,
            imported=zoo_heavy,
            seconds=zoo_wall,
        ),
        single(
            "zoo fit (digits CNN) launch to first training step",
            fit["to_first_step"],
            "s",
            to_fit_start=fit["to_fit_start"],
            fit_start_to_first_step=fit["to_first_step"] - fit["to_fit_start"],
            runs=fits,
        ),
    ]
