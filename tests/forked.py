"""`python cli.py ARGS` in a child forked from the test process, which has imported torch and Lightning once.

A fresh `zoo` process spends ~4.5 s importing Lightning (it imports torchmetrics, which imports torchvision,
transformers and scipy) before it reads its arguments; the suite starts ~80 of them. A child forked from a
worker that has imported them starts in milliseconds and is otherwise the program a user runs: its own process
(exit code, signals, crashes, file descriptors 1 and 2 of its own), ``cli.py`` run as ``__main__``, exit
handlers run at exit. What a fresh interpreter would not inherit from the test process is reset in the child:
the working directory, environment, ``sys.path`` (``PYTHONPATH``), warning filters and their once-registries,
logging handlers, signal handlers, faulthandler, torch's global switches.

`run_zoo(..., fresh=True)` (or ``ZOO_TEST_FRESH=1`` for every call) starts a real interpreter instead: for tests
of start-up itself (imports, timing) and of processes that other processes start from ``sys.argv``.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import io
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

# What a run imports before reading its arguments: imported once per test process, not once per run.
PRELOADED = ("lightning.pytorch", "zoo.lightning_cli", "zoo.commands.predict")
INTERRUPTED = 128 + signal.SIGINT
# MLflow keeps process-wide state a child would inherit: its store cached per tracking URI (a relative
# sqlite:///runs/mlflow.db would open the database of an earlier test's folder) and its active run.
HOLDS_RUN_STATE = ("mlflow",)


def can_fork() -> bool:
    """Whether a forked run starts as clean as a fresh one: not once this process has imported a tracker."""
    return not any(name in sys.modules for name in HOLDS_RUN_STATE)


@functools.cache
def _interpreter_path() -> list[str]:
    """The sys.path of a fresh interpreter after its first entry (the script's folder) and PYTHONPATH: the
    standard library, site-packages and what their .pth files add (an editable install)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env=env,
    )
    return json.loads(shown.stdout)


def run_forked(
    script: Path, args: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` as ``__main__`` in a forked child; returns what `subprocess.run` would."""
    for name in PRELOADED:
        __import__(name)
    _interpreter_path()
    command = [sys.executable, str(script), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into the test process
            os._exit(_child(script, args, cwd, env, out.fileno(), err.fileno()))
        code = _wait(pid, timeout, command)
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", errors="replace") for f in (out, err))
    return subprocess.CompletedProcess(command, code, stdout, stderr)


def _wait(pid: int, timeout: float, command: list[str]) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(command, timeout)
        time.sleep(0.02)


def _child(script: Path, args: list[str], cwd: Path, env: dict[str, str], out: int, err: int) -> int:
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(0)
        os.open(os.devnull, os.O_RDONLY)  # takes fd 0: no input, as from a test's subprocess.run
        sys.stdin = open(0, closefd=False)
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            open(2, "wb", closefd=False), line_buffering=True, errors="backslashreplace"
        )
        _fresh_process_state(script, cwd, env)
        sys.argv = [str(script), *args]
        code = _exit_code(lambda: runpy.run_path(str(script), run_name="__main__"))
        threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter does at exit: join non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if code == INTERRUPTED:  # the interpreter ends a KeyboardInterrupt by dying of SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return code
    except BaseException:  # the child must reach os._exit, whatever happened
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            return 1


def _exit_code(main: object) -> int:
    """Run ``main`` and return the exit code the interpreter would give it."""
    try:
        main()  # type: ignore[operator]
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return INTERRUPTED
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _fresh_process_state(script: Path, cwd: Path, env: dict[str, str]) -> None:
    import torch

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(script.parent), *extra, *_interpreter_path()]
    atexit._clear()  # the test process's exit handlers are not the run's
    for name in ("SIGTERM", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_IGN if name == "SIGPIPE" else signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if faulthandler.is_enabled():
        faulthandler.disable()
    # The interpreter's default filters; resetting them also invalidates every module's once-registry.
    warnings.resetwarnings()
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category, append=True)
    _fresh_logging()
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    torch.use_deterministic_algorithms(False)
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)


def _fresh_logging() -> None:
    """Logging as a fresh import leaves it: no handler on the root logger (the test runner's go), Lightning's
    loggers with their own handler on the new stderr, every other stream handler writing to the new streams."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                stream: Optional[object] = getattr(handler, "stream", None)
                # Not setStream(): it flushes the old stream, which the test runner may have closed already.
                handler.stream = sys.stdout if _is_stdout(stream) else sys.stderr
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:  # imported under the test runner's root handler: propagated instead
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False


def _is_stdout(stream: object) -> bool:
    fileno = getattr(stream, "fileno", None)
    try:
        return callable(fileno) and fileno() == 1
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
