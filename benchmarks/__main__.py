"""``python -m benchmarks [--short] [--only NAME ...] [--out FILE] [--strict]``

Runs the benchmarks, prints one table (figure, target, measured, both sides, pass / FAIL, contended) and
writes the figures as JSON: ``benchmarks/results.json`` for a full run, ``benchmarks/results-short.json`` for a
short one (so CI's short run never overwrites the full figures the README quotes).

Exit status: 0 when every benchmark ran, whatever its figures; 2 when a benchmark raised (a broken benchmark
fails CI, a slow machine does not). With ``--strict``, also 1 when a target is missed in a benchmark that was
not contended.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from benchmarks.common import MODES, ROOT, Result, loadavg, print_table, watch_load, write_json

BENCHMARKS = (
    "overhead",
    "parity",
    "memory",
    "text_memory",
    "efficiency",
    "startup",
    "dataloading",
    "ddp",
    "feature_cache",
)


def run_one(name: str, mode: str, start_loadavg: float) -> Result:
    """One benchmark module's ``run(mode)``, with the load around it; an exception becomes the result's error."""
    import torch

    threads = torch.get_num_threads()
    module = importlib.import_module(f"benchmarks.{name}")
    with watch_load(start_loadavg) as window:
        try:
            figures, error = module.run(mode), None
        except Exception:  # noqa: BLE001  (reported in the table and the JSON, and the exit status)
            figures, error = [], traceback.format_exc()
        finally:
            torch.set_num_threads(threads)  # each benchmark fixes its own; leave the caller's as it was
    return Result(name, figures, window, error)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="fewer steps and repeats (what CI runs, ~90 s)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the unit tests' size
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"run only these: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the JSON file (default: benchmarks/results.json, or benchmarks/results-short.json with --short)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a non-contended benchmark misses a target")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "short" if args.short else "full"
    assert mode in MODES
    out = args.out or ROOT / "benchmarks" / ("results.json" if mode == "full" else f"results-{mode}.json")

    before = loadavg()
    policy = os.environ.get("OMP_WAIT_POLICY") or "unset (spin, then sleep)"
    print(
        f"zoo benchmarks, {mode} mode; load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f} "
        f"on {os.cpu_count()} cores; OMP_WAIT_POLICY {policy}",
        flush=True,
    )
    results = []
    started = time.perf_counter()
    for name in args.only or BENCHMARKS:
        print(f"  {name} ...", end="", flush=True)
        result = run_one(name, mode, before[0])
        state = "error" if result.error else ("contended" if result.load.contended else "ok")
        print(f" {result.load.seconds:.1f} s ({state})", flush=True)
        if result.error:
            print(result.error, file=sys.stderr)
        results.append(result)
    write_json(out, mode, results, before)
    print_table(results, f"zoo vs plain PyTorch ({mode} mode, {time.perf_counter() - started:.0f} s)")
    print(f"figures written to {out}")
    missed = [f"{r.name}: {f.name}" for r in results if not r.load.contended for f in r.figures if f.passed is False]
    if any(r.error for r in results):
        return 2
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
