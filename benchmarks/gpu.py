"""What only a GPU can show, in one prepared run: ``python -m benchmarks.gpu [--only NAME ...] [--out FILE]``.

Five checks, each in a fresh ``python -m benchmarks.gpu --child NAME`` process with its own time limit (``LIMITS``;
the run stops by ``TOTAL``, under 8 minutes, whatever the machine):

- ``precision``: the zoo's Classifier (ResNet-18 at 64x64, AdamW) for 40 steps on learnable in-memory data under
  ``32-true``, ``bf16-mixed`` and ``16-mixed`` (loss scaling): every loss finite, and the last 5 steps' mean loss
  at most 0.9 of the first 5's.
- ``channels_last``: the zoo's default memory format (``auto``: ``channels_last`` for a convolutional image model)
  kept on the GPU (the convolution weights' layout during training), and its speed-up over ``contiguous`` for
  ResNet-18 at 224x224 under ``bf16-mixed``, zoo against zoo.
- ``throughput``: ResNet-18 at 224x224 (batch 64, the ImageNet stem), zoo (the bare Trainer of the other
  benchmarks) against its plain-PyTorch twin (:mod:`benchmarks.twins`: same network, optimizer, seed and batches;
  ``torch.autocast`` and a ``GradScaler`` where the zoo's precision plugin has them), interleaved, best of each;
  images/s over the steps after a warm-up, the clock stopped after ``torch.cuda.synchronize()``; fp32 and
  ``bf16-mixed``. Target: zoo / plain >= 0.95, as on the CPU.
- ``ddp``: ``zoo fit`` of the digits CNN under ``configs/trainer/ddp.yaml`` on every GPU (NCCL), its test after fit
  included; skipped, with a message, where there is one GPU.
- ``fsdp``: ``zoo fit`` of the digits ViT under ``configs/trainer/fsdp.yaml`` (bf16-mixed) on every GPU with a
  progressive FineTuning schedule: the layer groups each epoch changed are the schedule's (head alone, then the
  top backbone group too), and the checkpoint is tested in one process. On more than one GPU, also whether
  Lightning's test after fit in the same Trainer works (on 2 CPU processes it does not: README, Distributed).

Prints one table and writes ``benchmarks/results-gpu.json``. Exit status: 0 when every check ran and met its
target, 1 when one missed, 2 when one failed or ran past its limit, 77 (nothing checked) without CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks.common import ROOT, Figure, Result, best, interleave, print_table, ratio, single, watch_load
from benchmarks.gpu_twins import CLASSES, BatchPool, plain_run, random_batches, spec_for, zoo_run

CHECKS = ("precision", "channels_last", "throughput", "ddp", "fsdp")
LIMITS = {"precision": 60, "channels_last": 70, "throughput": 120, "ddp": 95, "fsdp": 125}  # seconds, per check
TOTAL = 470  # seconds from the start: the whole run stays under 8 minutes; no check gets more than is left
NO_CUDA = 77  # the exit status of "skipped" (automake's convention): this machine has no GPU to check
SIZES = {
    "full": {"steps": 40, "warmup": 5, "timed": 25, "batch": 64, "image": 224, "small_image": 64, "repeats": 2},
    "tiny": {"steps": 6, "warmup": 1, "timed": 2, "batch": 4, "image": 64, "small_image": 32, "repeats": 1},
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
FALL = 0.9  # the last 5 steps' mean loss over the first 5's, at most


# --- the checks (each runs in its own process; ``device="cpu"`` and ``size="tiny"`` are for the unit tests) ----
def check_precision(device: str = "cuda", size: str = "full", precisions: tuple[str, ...] = PRECISIONS) -> list[Figure]:
    from benchmarks.twins import synthetic_classification

    s = SIZES[size]
    shape = (3, s["small_image"], s["small_image"])
    # 4 batches of a learnable rule, each seen steps / 4 times: the loss must fall within the run.
    x, y = synthetic_classification(4 * s["batch"], shape, CLASSES, seed=0).tensors
    pool = BatchPool(list(zip(x.split(s["batch"]), y.split(s["batch"]))), s["steps"])
    spec = spec_for(torch.optim.AdamW, lr=1e-3)
    figures = []
    for precision in precisions:
        run = zoo_run(spec, pool, shape, device, precision, warmup=0)
        losses = run["losses"]
        finite = all(torch.isfinite(torch.tensor(losses)).tolist())
        head, tail = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        figures.append(
            single(
                f"{precision}: ResNet-18 {shape[1]}x{shape[2]}, last 5 steps' loss / first 5 steps' (finite)",
                tail / head if finite else float("inf"),
                "",
                at_most=FALL,
                first=head,
                last=tail,
                finite=finite,
                steps=len(losses),
            )
        )
    return figures


def resnet_sides(device: str, size: str) -> tuple[dict[str, Any], BatchPool, tuple[int, ...], int]:
    """ResNet-18's recipe, random batches of the size's images, their shape and the warm-up steps."""
    s = SIZES[size]
    shape = (3, s["image"], s["image"])
    return spec_for(), BatchPool(random_batches(4, s["batch"], shape), s["warmup"] + s["timed"]), shape, s["warmup"]


def check_channels_last(device: str = "cuda", size: str = "full") -> list[Figure]:
    spec, pool, shape, warmup = resnet_sides(device, size)
    precision = "bf16-mixed"
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        fmt: lambda fmt=fmt: zoo_run(spec, pool, shape, device, precision, warmup, memory_format=fmt)
        for fmt in ("auto", "contiguous")
    }
    runs = interleave(sides, SIZES[size]["repeats"], torch.get_num_threads())
    fast = {k: best(v) for k, v in runs.items()}
    images = SIZES[size]["timed"] * SIZES[size]["batch"]
    return [
        single(
            f"zoo default memory format on {fast['auto']['device']}: convolution weights in channels_last in training",
            float(fast["auto"]["channels_last"]),
            "",
            at_least=1.0,
        ),
        ratio(
            f"ResNet-18 {shape[1]}x{shape[2]}, {precision}: channels_last (zoo default) / contiguous, images/s",
            images / fast["auto"]["seconds"],
            images / fast["contiguous"]["seconds"],
            "images/s",
            sides=("channels_last", "contiguous"),
        ),
    ]


def check_throughput(device: str = "cuda", size: str = "full") -> list[Figure]:
    spec, pool, shape, warmup = resnet_sides(device, size)
    images = SIZES[size]["timed"] * SIZES[size]["batch"]
    figures = []
    for precision in ("32-true", "bf16-mixed"):
        sides = {
            "zoo": lambda p=precision: zoo_run(spec, pool, shape, device, p, warmup),
            # the zoo's default puts this model in channels_last; so does the twin, for the same kernels
            "plain": lambda p=precision: plain_run(spec, pool, shape, device, p, warmup, channels_last=True),
        }
        runs = interleave(sides, SIZES[size]["repeats"], torch.get_num_threads())
        zoo, plain = best(runs["zoo"]), best(runs["plain"])
        figures.append(
            ratio(
                f"ResNet-18 {shape[1]}x{shape[2]}, batch {SIZES[size]['batch']}, {precision}: zoo / plain, images/s",
                images / zoo["seconds"],
                images / plain["seconds"],
                "images/s",
                at_least=0.95,
                runs={k: [r["seconds"] for r in v] for k, v in runs.items()},
            )
        )
    return figures


def zoo_cli(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in ``cwd`` (where ``configs`` links to the repository's), as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"zoo {' '.join(args[:3])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


SHORT_FIT = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--pictures=false",
    "--baseline=false",
]


def check_ddp(device: str = "cuda", size: str = "full") -> Any:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return f"skipped: {gpus} GPU here; DDP needs 2 or more (configs/trainer/ddp.yaml uses every visible GPU)"
    with tempfile.TemporaryDirectory(prefix="zoo-gpu-") as tmp:
        cwd = Path(tmp)
        (cwd / "configs").symlink_to(ROOT / "configs")
        started = time.perf_counter()
        proc = zoo_cli(
            "fit",
            "--config",
            "configs/experiments/digits_cnn.yaml",
            "--trainer",
            "configs/trainer/ddp.yaml",
            *SHORT_FIT,
            "--trainer.callbacks+=tests.ddp_probe.RankProbe",
            f"--trainer.callbacks.out_dir={cwd / 'probe'}",
            cwd=cwd,
            timeout=LIMITS["ddp"] - 10,
        )
        seen = json.loads((cwd / "probe" / "rank0.json").read_text())
    return [
        single(
            f"ddp.yaml: processes that trained and tested (NCCL, {gpus} GPUs)",
            float(seen["world_size"]),
            "",
            at_least=float(gpus),
            seconds=time.perf_counter() - started,
            test=seen.get("test"),
            said=proc.stdout.strip().splitlines()[-1:],
        )
    ]


def check_fsdp(device: str = "cuda", size: str = "full") -> list[Figure]:
    gpus = torch.cuda.device_count()
    expected = {"0": ["head"], "1": ["backbone.norm", "head"]}
    recipe = ["--config", "configs/experiments/digits_vit.yaml", "--trainer", "configs/trainer/fsdp.yaml"]
    schedule = ["--finetuning.strategy=progressive", "--finetuning.unfreeze_epoch=1"]
    with tempfile.TemporaryDirectory(prefix="zoo-gpu-") as tmp:
        cwd = Path(tmp)
        (cwd / "configs").symlink_to(ROOT / "configs")
        probe = ["--trainer.callbacks+=tests.fsdp_probe.ChangedGroups", f"--trainer.callbacks.out_dir={cwd / 'probe'}"]
        zoo_cli("fit", *recipe, *schedule, *SHORT_FIT, "--test_after_fit=false", *probe, cwd=cwd, timeout=45)
        seen = [json.loads((cwd / "probe" / f"rank{r}.json").read_text()) for r in range(gpus)]
        ckpt = cwd / "runs" / "digits_vit" / "version_0" / "checkpoints" / "last.ckpt"
        tested = zoo_cli(
            "test", "--config", recipe[1], f"--ckpt_path={ckpt}", "--trainer.devices=1", *SHORT_FIT, cwd=cwd, timeout=25
        )
        figures = [
            single(
                f"fsdp.yaml + progressive schedule on {gpus} GPU(s): processes whose epochs changed the schedule's groups",
                float(sum(s["changed"] == expected for s in seen)),
                "",
                at_least=float(gpus),
                changed=[s["changed"] for s in seen],
                expected=expected,
                units=seen[0]["units"],
            ),
            single(
                "its checkpoint tested in one process (zoo test): lines with test/acc",
                float(sum("test/acc=" in line for line in tested.stdout.splitlines())),
                "",
                at_least=1.0,
            ),
        ]
        if gpus > 1:  # the limit the CPU run showed: Lightning's test after fit on several FSDP processes
            try:
                zoo_cli("fit", *recipe, *schedule, *SHORT_FIT, cwd=cwd, timeout=35)
                works, said = 1.0, ""
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                works, said = 0.0, str(err)[-500:]
            figures.append(single("test after fit in the same Trainer on several FSDP processes", works, "", said=said))
    return figures


# --- the run ---------------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[..., Any]] = {
    "precision": check_precision,
    "channels_last": check_channels_last,
    "throughput": check_throughput,
    "ddp": check_ddp,
    "fsdp": check_fsdp,
}


def child(name: str) -> None:
    """Run one check in this process and print its figures (or why it was skipped) as the last line."""
    outcome = RUNNERS[name]()
    if isinstance(outcome, str):
        print(json.dumps({"skipped": outcome}), flush=True)
    else:
        print(json.dumps({"figures": [dataclasses.asdict(f) for f in outcome]}, default=float), flush=True)


def run_check(name: str, limit: float) -> tuple[Result, Optional[str]]:
    """One check in its own process, stopped after ``limit`` seconds; its figures, or its error, or a skip."""
    figures: list[Figure] = []
    error: Optional[str] = None
    found: dict[str, Any] = {}
    with watch_load() as window:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.gpu", "--child", name],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            error = f"ran past its limit of {limit:.0f} s"
        else:
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                error = f"exited {proc.returncode}:\n{proc.stderr[-3000:]}"
            else:
                found = json.loads(lines[-1])
                figures = [Figure(**{**f, "sides": tuple(f["sides"])}) for f in found.get("figures", [])]
    return Result(name, figures, window, error), found.get("skipped")


def describe_gpus() -> dict[str, Any]:
    """What the figures were measured on, beside :func:`benchmarks.common.machine`."""
    from benchmarks.common import machine

    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {
        **machine(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpus": [{"name": g.name, "memory_gib": round(g.total_memory / 2**30, 1)} for g in gpus],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=CHECKS, metavar="NAME", help=f"run only: {', '.join(CHECKS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-gpu.json", help="the JSON file")
    parser.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"python -m benchmarks.gpu: no CUDA device here (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none'}): these checks need a GPU; nothing was run. On a machine with one: "
            "python -m benchmarks.gpu",
            file=sys.stderr,
        )
        return NO_CUDA
    if args.child:
        child(args.child)
        return 0
    started, results, skips = time.perf_counter(), [], {}
    gpus = describe_gpus()
    print(f"zoo GPU checks on {len(gpus['gpus'])} x {gpus['gpus'][0]['name']}, torch {torch.__version__}", flush=True)
    for name in args.only or CHECKS:
        limit = max(1.0, min(LIMITS[name], TOTAL - (time.perf_counter() - started)))
        print(f"  {name} (limit {limit:.0f} s) ...", end="", flush=True)
        result, skipped = run_check(name, limit)
        print(f" {result.load.seconds:.1f} s ({'error' if result.error else skipped or 'ok'})", flush=True)
        if result.error:
            print(result.error, file=sys.stderr)
        if skipped:
            skips[name] = skipped
        results.append(result)
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": gpus,
        "seconds": time.perf_counter() - started,
        "checks": {r.name: {**r.to_json(), "skipped": skips.get(r.name)} for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print_table(results, f"zoo on {gpus['gpus'][0]['name']} ({data['seconds']:.0f} s)")
    for name, why in skips.items():
        print(f"{name}: {why}")
    print(f"figures written to {args.out}")
    if any(r.error for r in results):
        return 2
    return 1 if any(f.passed is False for r in results for f in r.figures) else 0


if __name__ == "__main__":
    sys.exit(main())
