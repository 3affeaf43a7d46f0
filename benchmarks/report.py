"""The figures of a benchmark run as a Markdown table, for the README:
``python -m benchmarks.report [benchmarks/results.json]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT


def _num(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def markdown(data: dict[str, Any]) -> str:
    """One row per figure: benchmark, figure, target, measured, the two sides, verdict, contended."""
    m = data["machine"]
    load = " ".join(f"{v:.2f}" for v in data["loadavg_before"])
    lines = [
        f"Measured {data['date'][:10]} ({data['mode']} run) on {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"torch {m['torch']}, Lightning {m['lightning']}, OMP_WAIT_POLICY {m['omp_wait_policy'] or 'unset'}; "
        f"load average before the run: {load}.",
        "",
        "| benchmark | figure | target | measured | zoo | plain | result | contended (others' cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in data["benchmarks"].items():
        contended = f"{'yes' if result['contended'] else 'no'} ({result['load']['others_cores']:.2f})"
        if result["error"]:
            last = result["error"].strip().splitlines()[-1]
            lines.append(f"| {name} | error: {last} | | | | | ERROR | {contended} |")
            continue
        for i, f in enumerate(result["figures"]):
            sides = f.get("sides", ["zoo", "plain"])
            labels = ("", "") if sides == ["zoo", "plain"] else (f" ({sides[0]})", f" ({sides[1]})")
            unit = f" {f['side_unit']}" if f["side_unit"] else ""
            verdict = {True: "pass", False: "**FAIL**", None: ""}[f["passed"]]
            lines.append(
                f"| {name if i == 0 else ''} | {f['name']} | {f['target']} | {_num(f['measured'])} {f['unit']} | "
                f"{_num(f['zoo']) + unit + labels[0] if f['zoo'] is not None else ''} | "
                f"{_num(f['plain']) + unit + labels[1] if f['plain'] is not None else ''} | {verdict} | "
                f"{contended if i == 0 else ''} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results.json"
    print(markdown(json.loads(path.read_text())), end="")
