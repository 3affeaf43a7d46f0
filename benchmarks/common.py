"""What every benchmark shares: interleaved best-of timing, load capture, figures, JSON and the table.

A benchmark runs the zoo and its plain-PyTorch twin interleaved (zoo, plain, zoo, plain, ...) so that a burst
of load from elsewhere hits both sides alike, and keeps the best (fastest) run of each: the best run is the one
least disturbed. Every figure keeps both sides' values; its ratio or difference is computed here, once.

Contention: the machine is shared. Around each benchmark we read ``/proc/loadavg`` and ``/proc/stat``; the CPU
time the whole machine spent busy, minus the CPU time of this process and its children, is what *other*
processes took. A benchmark is marked contended when others took more than ``CONTENDED_CORES`` cores on
average during it, or when the 1-minute load average exceeded the number of cores before the run started.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1
CONTENDED_CORES = 0.5  # others' average use of the CPU, in cores, above which a benchmark is marked contended
MODES = ("tiny", "short", "full")  # tiny: the unit tests (seconds); short: CI (~90 s in all); full: ~10 min
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- load ---------------------------------------------------------------------------------------------------
def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot; steal counts as busy."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadWindow:
    """The load around one benchmark: load averages at its start and end, and what other processes used."""

    loadavg_start: tuple[float, float, float]
    loadavg_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    others_cores: float = 0.0  # average cores used by other processes during the window
    seconds: float = 0.0
    contended: bool = False


@contextlib.contextmanager
def watch_load(start_loadavg: Optional[float] = None) -> Iterator[LoadWindow]:
    """Measure the load while the block runs; ``start_loadavg`` is the 1-minute load before the whole run
    began (later starts include the load this run itself made)."""
    window = LoadWindow(loadavg_start=loadavg())
    busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
    try:
        yield window
    finally:
        window.seconds = time.perf_counter() - wall
        others = (_busy_seconds() - busy) - (_own_seconds() - own)
        window.others_cores = max(0.0, others / max(window.seconds, 1e-9))
        window.loadavg_end = loadavg()
        before = window.loadavg_start[0] if start_loadavg is None else start_loadavg
        window.contended = window.others_cores > CONTENDED_CORES or before > CORES


# --- timing -------------------------------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """Fix PyTorch's intra-op threads (interop threads can only be set once per process, so they are left)."""
    import torch

    torch.set_num_threads(n)


def interleave(
    sides: dict[str, Callable[[], dict[str, Any]]], repeats: int, threads: int, warmup: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Run each side ``repeats`` times, alternating sides, with a fixed number of threads.

    Each side is a callable returning a dict with at least ``seconds`` (the time it measured itself, so a side
    can leave set-up out). The first round is a warm-up and is dropped when ``warmup``. Returns every run of
    every side, in order.
    """
    set_threads(threads)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for i in range(repeats + int(warmup)):
        for name, fn in sides.items():
            gc.collect()
            result = fn()
            if "seconds" not in result:
                raise ValueError(f"side {name!r} returned no 'seconds'")
            if i or not warmup:
                runs[name].append(result)
    return runs


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run (the least disturbed one)."""
    return min(runs, key=lambda r: r["seconds"])


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@contextlib.contextmanager
def in_tmp_dir() -> Iterator[Path]:
    """Work in a fresh temporary directory (runs/ and logs land there), then come back."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def run_python(
    args: list[str],
    env: Optional[dict[str, str]] = None,
    timeout: float = 600,
    cwd: Optional[Path] = None,
    json_result: bool = True,
) -> dict[str, Any]:
    """Run ``python ARGS`` (from the repository root unless ``cwd``) with the repository importable.

    With ``json_result`` its last stdout line that starts with ``{`` is a JSON object, returned with ``wall``
    (seconds from start to exit) added; otherwise ``wall``, ``stdout`` and ``stderr``.
    """
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if not json_result:
        return {"wall": wall, "stdout": proc.stdout, "stderr": proc.stderr}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"python {' '.join(args)} printed no JSON result:\n{proc.stdout[-2000:]}")
    return {**json.loads(lines[-1]), "wall": wall}


# --- figures ------------------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured figure against its target.

    ``zoo`` and ``plain`` are the two sides it is computed from (None for a figure of one side, such as a
    start-up time); ``measured`` is derived from them by :func:`ratio` or :func:`added`, never given apart.
    ``at_most`` / ``at_least`` is the target; a figure with neither is reported without a verdict.
    """

    name: str
    measured: float
    unit: str
    at_most: Optional[float] = None
    at_least: Optional[float] = None
    zoo: Optional[float] = None
    plain: Optional[float] = None
    side_unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    sides: tuple[str, str] = ("zoo", "plain")  # what the two columns hold, where it is not the zoo and its twin

    @property
    def target(self) -> str:
        if self.at_most is not None:
            return f"<= {self.at_most:g} {self.unit}".rstrip()
        if self.at_least is not None:
            return f">= {self.at_least:g} {self.unit}".rstrip()
        return "(reported)"

    @property
    def passed(self) -> Optional[bool]:
        if self.at_most is not None:
            return self.measured <= self.at_most
        if self.at_least is not None:
            return self.measured >= self.at_least
        return None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "target": self.target, "passed": self.passed}


def ratio(
    name: str,
    zoo: float,
    plain: float,
    side_unit: str,
    at_least: Optional[float] = None,
    sides: tuple[str, str] = ("zoo", "plain"),
    **details: Any,
) -> Figure:
    """``zoo / plain`` (higher is better for the zoo: throughputs, samples/s). ``sides`` names the two columns
    where they are not the zoo and its plain twin (e.g. an option against the default)."""
    return Figure(
        name,
        zoo / plain,
        "x",
        at_least=at_least,
        zoo=zoo,
        plain=plain,
        side_unit=side_unit,
        details=details,
        sides=sides,
    )


def added(
    name: str,
    zoo: float,
    plain: float,
    per: float,
    scale: float,
    unit: str,
    side_unit: str,
    at_most: Optional[float] = None,
    **details: Any,
) -> Figure:
    """``(zoo - plain) / per * scale``: what the zoo adds, e.g. seconds over steps in ms per step."""
    return Figure(
        name,
        (zoo - plain) / per * scale,
        unit,
        at_most=at_most,
        zoo=zoo,
        plain=plain,
        side_unit=side_unit,
        details={"per": per, **details},
    )


def single(
    name: str,
    value: float,
    unit: str,
    at_most: Optional[float] = None,
    at_least: Optional[float] = None,
    **details: Any,
) -> Figure:
    """A figure of one side only (a start-up time, an efficiency, a speed-up of an option)."""
    return Figure(name, value, unit, at_most=at_most, at_least=at_least, details=details)


# --- results ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """One benchmark's figures with the load around it, or the error that stopped it."""

    name: str
    figures: list[Figure]
    load: LoadWindow
    error: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": [f.to_json() for f in self.figures],
            "load": asdict(self.load),
            "contended": self.load.contended,
            "error": self.error,
        }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import lightning
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": CORES,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "bf16_native": bf16_native(),
    }


def bf16_native() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    from zoo.compat import mkldnn_bf16_supported

    try:
        return bool(mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def write_json(path: Path, mode: str, results: list[Result], loadavg_before: tuple[float, float, float]) -> None:
    """The run as JSON: when, where, the load before it, and every benchmark's figures."""
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "machine": machine(),
        "loadavg_before": loadavg_before,
        "contended_rule": f"others used > {CONTENDED_CORES} cores during the benchmark, "
        f"or the 1-minute load average was > {CORES} (cores) before the run",
        "benchmarks": {r.name: r.to_json() for r in results},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:.3g}"


def print_table(results: list[Result], title: str) -> None:
    """The figures as one rich table: figure, target, measured, both sides, verdict, contention."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column, kw in (
        ("benchmark", {"no_wrap": True}),
        ("figure", {}),
        ("target", {"no_wrap": True}),
        ("measured", {"justify": "right", "no_wrap": True}),
        ("zoo", {"justify": "right"}),
        ("plain", {"justify": "right"}),
        ("result", {"no_wrap": True}),
        ("contended", {"no_wrap": True}),
    ):
        table.add_column(column, **kw)
    for r in results:
        load = r.load
        mark = f"yes ({load.others_cores:.2f} cores)" if load.contended else f"no ({load.others_cores:.2f})"
        if r.error:
            last = [line for line in r.error.splitlines() if line.strip()][-1]
            table.add_row(r.name, f"[red]error: {last[:150]}[/]", "", "", "", "", "[red]ERROR[/]", mark)
            continue
        for i, f in enumerate(r.figures):
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[f.passed]
            unit = f" {f.side_unit}" if f.side_unit else ""
            named = f.sides != ("zoo", "plain")
            zoo_label, plain_label = (f" ({f.sides[0]})", f" ({f.sides[1]})") if named else ("", "")
            table.add_row(
                r.name if i == 0 else "",
                f.name,
                f.target,
                f"{_fmt(f.measured)} {f.unit}".rstrip(),
                "" if f.zoo is None else _fmt(f.zoo) + unit + zoo_label,
                "" if f.plain is None else _fmt(f.plain) + unit + plain_label,
                verdict,
                mark if i == 0 else "",
            )
    Console(width=max(200, Console().width)).print(table)
